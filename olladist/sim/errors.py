"""The simulator's errors.

    OlladistError (olladist.errors)
    └── SimError              something the simulator itself refuses or cannot do
        ├── SimConfigError    a bad environment variable, fault spec or catalogue
        └── ApiError          an HTTP error in Ollama's shape: status + {"error": message}
            ├── ModelNotFound 404
            └── QueueFull     503, OLLAMA_MAX_QUEUE reached

Handlers raise ApiError; one middleware turns it into the response Ollama would send.
"""

from __future__ import annotations

from olladist.errors import OlladistError

# Ollama's wording (server/sched.go).
QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class SimError(OlladistError):
    pass


class SimConfigError(SimError):
    pass


class ApiError(SimError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelNotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class QueueFull(ApiError):
    def __init__(self) -> None:
        super().__init__(503, QUEUE_FULL_MESSAGE)
