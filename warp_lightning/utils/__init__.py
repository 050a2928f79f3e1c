"""Infrastructure shared by every command: atomic writes, loggers, config checks, output paths."""
