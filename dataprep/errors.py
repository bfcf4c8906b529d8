"""The one exception a stage raises for a bad film: it becomes a `failed` manifest row."""


class FilmError(Exception):
    """A film that cannot be curated. `reason` is short, stable and shown to users.

    Raised by stages for bad *input* (unreadable, not a video, zero length ...).
    Broken internal invariants are not FilmErrors: they raise and stop the run.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
