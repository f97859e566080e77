"""Hook specifications: the whole plugin interface of megalodon.

Plugins are separate distributions that declare one entry point in the ``megalodon`` group, named after the
distribution, pointing at a light module (conventionally ``<package>.hooks``) that implements some of these
hooks with ``@megalodon_core.hookimpl``.  Heavy modules (an executor's implementation, the Docker SDK) are
imported only inside the factories those hooks return, so ``megalodon --version`` and ``list-plugins`` stay
cheap and a broken optional dependency only breaks the plugin that needs it.

Hook implementations must not give arguments default values (pluggy would then never pass the caller's
value) and are always called with keyword arguments.  Every hook is called through pluggy, so the call
order is pluggy's: ``tryfirst`` impls first, then the last-registered plugin first, ``trylast`` impls last.
Entry-point plugins are registered in the order of their entry-point names, then in-process plugins.
Hooks documented as "collected" return a list per plugin; the host flattens them in that call order.

Registration hooks (``megalodon_register_*``, ``megalodon_config_fields``, ``megalodon_cli_commands``) are
also tried on each plugin alone when it loads: a plugin whose registration hook raises or returns something
else than a list of records is unregistered and listed as broken with its error (``list-plugins``), like a
plugin that fails to import, and the other plugins work.  They must therefore be cheap and side-effect free.

Lifecycle hooks (``megalodon_task_*``, ``megalodon_running_changed``, ``megalodon_queue_call``,
``megalodon_reclaim_failed``, ``megalodon_worker_*``) observe the worker; results are ignored.  An exception
in one is logged and does not affect the run, but pluggy then skips the impls it would have called after
it in that call, so core's own internal plugins (Prometheus metrics, worker-runner log routing) implement
them ``tryfirst``.  Every hook here is documented; ``tests/core/test_plugins.py`` fails when one, or one of
its parameters, is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .contracts import CommandInfo, ExecutorInfo, FeatureInfo
    from .task import TaskRun

hookspec = pluggy.HookspecMarker("megalodon")


class MegalodonSpec:
    """The hooks a megalodon plugin may implement."""

    @hookspec
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        """Register task executors.

        Called when the plugin host loads.  Collected: each plugin returns a list of
        :class:`~megalodon_core.contracts.ExecutorInfo`; names must be unique across all plugins (a
        duplicate makes loading fail loudly).  The ``factory`` of each record is called once per worker
        with the :class:`~megalodon_core.worker_context.WorkerContext`.

        **Which executor runs a payload.**  With config ``executor`` naming an executor, that one runs every
        payload.  With ``executor: auto`` (the default), the executors whose ``accepts(payload)`` is true
        are candidates and the first in this hook's call order wins — the documented priority: ``tryfirst``
        impls, then the last-registered plugin, ``trylast`` impls last.  megalodon's own executors
        (``native``, ``docker``) register ``trylast``, so a third-party executor that accepts a payload
        always gets it.  When no running executor accepts a payload: a generic-worker payload (``command``)
        or docker-worker payload (``image``) whose executor is not running resolves malformed-payload with a
        log line naming the distribution that runs it (``megalodon-native``, ``megalodon-docker``), or saying
        that executor could not start here; any other payload goes to the only running executor if there is
        exactly one (so its validation names the wrong fields), else resolves malformed-payload listing the
        installed executors.  ``megalodon validate-payload`` applies the same rule and words
        (``megalodon_core.worker.executor_choice``).

        :return: the executors this plugin provides (may be empty).
        """

    @hookspec
    def megalodon_register_features(self) -> list[FeatureInfo]:
        """Register task features (live log, taskcluster-proxy, chain of trust, mounts...).

        Called once when the plugin host loads.  Collected: each plugin returns a list of
        :class:`~megalodon_core.contracts.FeatureInfo`; names must be unique.  A worker instantiates every
        registered feature once; per task, enabled features that the task requests are started in
        registration order and stopped in reverse order.

        :return: the features this plugin provides (may be empty).
        """

    @hookspec
    def megalodon_config_fields(self) -> dict[str, tuple[Any, Any]]:
        """Declare worker-config keys this plugin reads.

        Collected: each plugin returns ``{key: (type, default)}`` in pydantic's ``create_model`` form; the
        core adds them to the config model, so unknown keys are still rejected and plugin keys are typed
        and validated with the rest.  A key declared twice with different types fails loading.

        :return: the config keys this plugin adds (may be empty).
        """

    @hookspec
    def megalodon_cli_commands(self) -> list[CommandInfo]:
        """Add subcommands to the ``megalodon`` command line.

        Called once when the CLI starts (not for ``--version``), on a host that calls no other hook:
        ``megalodon --help`` imports every plugin's ``hooks.py`` for it, so keep that module light.
        Collected: each plugin returns a list of :class:`~megalodon_core.contracts.CommandInfo`.  Give
        ``callback`` as ``"package.module:function"``: the command is then listed by its ``name`` and
        ``help`` and its module is imported only when the command runs, with every argument (its own
        ``--help`` included).  A plain callable is accepted too, at the price of importing its module
        whenever the CLI starts.  The function's parameters are declared the typer way
        (``Annotated[..., typer.Option(...)]``).  A name that clashes with a core command or another
        plugin's fails loudly.

        :return: the commands this plugin adds (may be empty).
        """

    @hookspec
    def megalodon_task_claimed(self, task_id: str, run_id: int, task: dict[str, Any]) -> None:
        """Observe a claimed run, before anything is done for it.

        Called once per claim.  Results are ignored; an exception is logged and does not affect the run.

        :param task_id: the task's id.
        :param run_id: the claimed run.
        :param task: the task definition as returned by claimWork (do not modify).
        """

    @hookspec
    def megalodon_task_started(self, task_id: str, run_id: int, executor: str) -> None:
        """Observe the start of a run's commands (after payload validation and feature start).

        Results are ignored; an exception is logged and does not affect the run.

        :param task_id: the task's id.
        :param run_id: the run.
        :param executor: the name of the executor running it.
        """

    @hookspec
    def megalodon_task_resolved(
        self, task_id: str, run_id: int, state: str, reason: str, duration: float | None, run: TaskRun | None
    ) -> None:
        """Observe the resolution the worker reported for a run.

        Called once per claim, after the report call (whether it succeeded or not).  For a run cancelled by
        the queue, ``state`` is ``exception`` and ``reason`` ``canceled`` and nothing was reported.  Results
        are ignored; an exception is logged.  An impl may declare only the parameters it uses.

        :param task_id: the task's id.
        :param run_id: the run.
        :param state: ``completed``, ``failed`` or ``exception``.
        :param reason: ``completed``, ``failed`` or the exception reason.
        :param duration: seconds from the claim to the resolution (None when unknown).
        :param run: the finished :class:`~megalodon_core.task.TaskRun` (uploaded artifacts, errors), or None
            when the worker resolved a run it did not execute.  Read it; do not keep it.
        """

    @hookspec
    def megalodon_running_changed(self, running: int) -> None:
        """Observe the number of runs this worker holds, each time it changes (claim or resolution).

        Results are ignored; an exception is logged.

        :param running: runs claimed and not yet finished.
        """

    @hookspec
    def megalodon_queue_call(self, method: str, seconds: float) -> None:
        """Observe one call of the worker to the queue (``claimWork``, ``reportCompleted``...), failed ones too.

        Results are ignored; an exception is logged.

        :param method: the queue API method name.
        :param seconds: wall time of the call, retries included.
        """

    @hookspec
    def megalodon_reclaim_failed(self, task_id: str, run_id: int) -> None:
        """Observe a failed ``reclaimTask`` call for a run (it is retried until the claim expires).

        Results are ignored; an exception is logged.

        :param task_id: the task's id.
        :param run_id: the run.
        """

    @hookspec
    def megalodon_worker_started(self, worker_group: str, worker_id: str) -> None:
        """Observe the start of the worker, before executors and features initialise and before any claim.

        Results are ignored; an exception is logged.

        :param worker_group: the worker's ``workerGroup``.
        :param worker_id: the worker's ``workerId``.
        """

    @hookspec
    def megalodon_worker_stopped(self, exit_code: int) -> None:
        """Observe the end of the worker, after running tasks finished and before the process exits.

        Called once for each ``megalodon_worker_started``, however the worker ends.  Results are ignored; an
        exception is logged.

        :param exit_code: the exit code the worker is about to return (generic-worker's codes; 69 when its
            set-up raised).
        """
