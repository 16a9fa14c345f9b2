"""What consumes a scheduled program: the executable schedule, the interpreter, visualizers."""
