"""Board catalog: one TOML data file per supported board (see catalog.py)."""

from .catalog import (FAMILIES, PS_TYPES, Board, BoardError, Resources, format_board_table, list_boards,
                      load_board, parse_board)

__all__ = ["FAMILIES", "PS_TYPES", "Board", "BoardError", "Resources", "format_board_table", "list_boards",
           "load_board", "parse_board"]
