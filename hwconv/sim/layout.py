"""Where a program's sections live in the simulated DRAM, and which bytes the engine may touch.

`place_program` lays out the device image (preamble + descriptors), the params blob and the
activation arena one after another from `RAM_BASE`, each on a 4 KiB page (as `pynq.allocate`
gives page-aligned buffers, and so that no section shares a page, or a DMA burst, with
another). Address 0 is left unmapped so that an engine reading through a base register that was
never written shows up as an access outside every region.

`MemoryMap` is the set of regions the bench has handed out; the bench's DRAM model answers any
engine access outside them (or a write into a read-only one) with SLVERR and records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec.memory import PAGE_BYTES
from ..spec.program import Program

__all__ = ["RAM_BASE", "MemoryMap", "ProgramLayout", "Region", "place_program",
           "ram_bytes_for", "align_up"]

RAM_BASE = PAGE_BYTES        # the first page stays unmapped (see the module docstring)
MIN_RAM_BYTES = 1 << 20


def align_up(n: int, to: int = PAGE_BYTES) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class Region:
    name: str
    base: int
    size: int
    writable: bool = True   # may the engine write it (the arena), or only read (image, params)

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, addr: int, nbytes: int, granule: int = 1) -> bool:
        """[addr, addr + nbytes) lies inside, the end rounded up to a multiple of `granule`."""
        return self.base <= addr and addr + nbytes <= align_up(self.end, granule)

    def __str__(self) -> str:
        return f"{self.name} [0x{self.base:x}, 0x{self.end:x}){'' if self.writable else ' ro'}"


@dataclass(frozen=True)
class ProgramLayout:
    image: Region
    params: Region
    arena: Region

    @property
    def regions(self) -> tuple[Region, Region, Region]:
        return self.image, self.params, self.arena

    @property
    def end(self) -> int:
        return max(r.end for r in self.regions)


def place_program(program: Program, base: int = RAM_BASE) -> ProgramLayout:
    """Image, params and arena on consecutive pages from `base` (page-aligned)."""
    if base % PAGE_BYTES:
        raise ValueError(f"program base 0x{base:x} is not {PAGE_BYTES}-byte aligned")
    image = Region("image", base, len(program.device_image()), writable=False)
    params = Region("params", align_up(image.end), len(program.params), writable=False)
    arena = Region("arena", align_up(params.end), program.arena_bytes)
    return ProgramLayout(image, params, arena)


def ram_bytes_for(end: int) -> int:
    """A power-of-two RAM size (at least 1 MiB) holding addresses below `end`."""
    size = MIN_RAM_BYTES
    while size < end:
        size *= 2
    return size


@dataclass
class MemoryMap:
    """The regions handed out so far; accesses are checked against them."""

    regions: list[Region] = field(default_factory=list)

    def add(self, region: Region) -> Region:
        for r in self.regions:
            if region.base < r.end and r.base < region.end:
                raise ValueError(f"region {region} overlaps {r}")
        self.regions.append(region)
        return region

    def remove(self, name: str) -> None:
        self.regions = [r for r in self.regions if r.name != name]

    def clear(self) -> None:
        self.regions.clear()

    def check(self, addr: int, nbytes: int, write: bool, granule: int = 1) -> str | None:
        """None if the access is allowed, else why not (for the violation message). `granule`:
        reads fetch whole bus words, so a region's unaligned end is rounded up to one."""
        for r in self.regions:
            if r.size and r.contains(addr, nbytes, granule):
                if write and not r.writable:
                    return f"write into read-only region {r}"
                return None
        where = "; ".join(map(str, self.regions)) or "none mapped"
        return f"outside every region the bench mapped ({where})"
