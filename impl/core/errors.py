"""The suite's own errors: each says what is wrong and what to do; the CLI prints them without a traceback."""


class MilestonesError(Exception):
    pass
