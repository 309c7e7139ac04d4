"""The one exception type users see: its message is printed as a single line, no traceback."""


class Llama2binError(Exception):
    """Bad input or a refused conversion. The message names the file, field or tensor."""
