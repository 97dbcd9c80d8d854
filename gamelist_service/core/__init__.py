"""The service itself: refresh, write and announce lists, the scheduler and its leadership, list building."""
