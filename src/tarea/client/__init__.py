"""tarea's Python client: run tasks on a tarea server, typed.

::

    from tarea.client import Client, TaskFailed

    with Client() as client:                     # TAREA_URL, TAREA_API_KEY
        print(client.run("tasks_image:latest", "suma", {"a": 10, "b": 20}))  # 30
        task = client.tasks.create("tasks_image:latest", "esperar", {"segundos": 2})
        for event in client.tasks.events(task.id):
            print(event.event, event.data)

:class:`AsyncClient` has the same surface, awaited. Every error is a
:class:`TareaError` (the tree is drawn in :mod:`tarea.client.errors`). This
package imports httpx, httpx-sse and pydantic only, never the server.
"""

from tarea.client._async import AsyncBatchesAPI, AsyncClient, AsyncPoolsAPI, AsyncTasksAPI
from tarea.client._sync import BatchesAPI, Client, PoolsAPI, TasksAPI
from tarea.client.errors import (
    APIError,
    AuthenticationError,
    TareaConnectionError,
    TareaError,
    TareaTimeoutError,
    TaskFailed,
    WaitTimeout,
)
from tarea.client.models import (
    CallbackState,
    ContainerInfo,
    Failure,
    Health,
    PoolEntry,
    Pools,
    Progress,
    RetryPolicy,
    Task,
    TaskEvent,
    TaskOptions,
    TaskSpec,
    TaskStatus,
    Timings,
)
from tarea.client.problems import *  # noqa: F403 (one class per problem code)
from tarea.client.problems import PROBLEM_CLASSES

__all__ = [
    "PROBLEM_CLASSES",
    "APIError",
    "AsyncBatchesAPI",
    "AsyncClient",
    "AsyncPoolsAPI",
    "AsyncTasksAPI",
    "AuthenticationError",
    "BatchesAPI",
    "CallbackState",
    "Client",
    "ContainerInfo",
    "Failure",
    "Health",
    "PoolEntry",
    "Pools",
    "PoolsAPI",
    "Progress",
    "RetryPolicy",
    "TareaConnectionError",
    "TareaError",
    "TareaTimeoutError",
    "Task",
    "TaskEvent",
    "TaskFailed",
    "TaskOptions",
    "TaskSpec",
    "TaskStatus",
    "TasksAPI",
    "Timings",
    "WaitTimeout",
    *(cls.__name__ for cls in PROBLEM_CLASSES.values()),
]
