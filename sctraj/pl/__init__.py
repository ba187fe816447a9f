"""Plotting (matplotlib / scanpy only; never imports torch)."""

__all__: list[str] = []
