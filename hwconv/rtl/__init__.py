"""Amaranth gateware of the unified engine; every width, offset and opcode comes from hwconv.spec."""
