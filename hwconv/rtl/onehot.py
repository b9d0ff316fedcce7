"""OneHotFSM: a state machine with one register per state, written like Amaranth's m.FSM.

Amaranth encodes an FSM's state in binary, so every decision starts by decoding the state
register, and every transition's enable is one wide OR over (state == s) & condition terms.
In the engine's sequencer those decodes were the worst paths of the whole design (six LUT
levels into the state register's own enable). Here each state is a flag register: a state's
body is `m.If(flag)`, and a transition clears the current flag and sets the target's, so each
flag's next value depends on its own few incoming transitions only (FPGA tools encode their
FSMs one-hot for the same reason).

    fsm = OneHotFSM(m, ["IDLE", "RUN"], name="seq")
    with fsm.state("IDLE"):
        with m.If(go):
            fsm.goto("RUN")
    with fsm.state("RUN"):
        ...
    fsm.flags["RUN"]      # a register: "in RUN this cycle"

The first state is the reset state. Exactly one flag is set at any time, as long as every
transition goes through `goto` from inside a state's body.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from amaranth.hdl import Module, Signal

__all__ = ["OneHotFSM"]


class OneHotFSM:
    def __init__(self, m: Module, states: Sequence[str], *, name: str):
        if len(set(states)) != len(states) or not states:
            raise ValueError(f"{name}: states must be distinct and at least one: {list(states)}")
        self._m = m
        self.flags = {s: Signal(name=f"{name}_{s.lower()}", init=int(i == 0))
                      for i, s in enumerate(states)}
        self._current: str | None = None
        self._targets: set[str] = set()     # states the current body has gone to so far

    @contextlib.contextmanager
    def state(self, name: str) -> Iterator[None]:
        if self._current is not None:
            raise RuntimeError(f"state {name} opened inside state {self._current}")
        with self._m.If(self.flags[name]):
            self._current, self._targets = name, set()
            try:
                yield
            finally:
                self._current = None

    def goto(self, name: str) -> None:
        """Leave the current state for `name` next cycle. As with m.next, a later goto in the
        same body overrides an earlier one: it clears the targets set before it."""
        cur = self._current
        if cur is None:
            raise RuntimeError(f"goto({name}) outside a state's body")
        stmts = [self.flags[t].eq(0) for t in sorted(self._targets) if t != name]
        if name != cur:
            stmts.append(self.flags[cur].eq(0))
        stmts.append(self.flags[name].eq(1))
        self._targets.add(name)
        self._m.d.sync += stmts
