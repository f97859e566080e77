"""Hook specifications: the whole plugin interface of megalodon.

Plugins are separate distributions that declare one entry point in the ``megalodon`` group, named after the
distribution, pointing at a light module (conventionally ``<package>.hooks``) that implements some of these
hooks with ``@megalodon_core.hookimpl``.  Heavy modules (an executor's implementation, the Docker SDK) are
imported only inside the factories those hooks return, so ``megalodon --version`` and ``list-plugins`` stay
cheap and a broken optional dependency only breaks the plugin that needs it.

Hook implementations must not give arguments default values (pluggy would then never pass the caller's
value) and are always called with keyword arguments.  Hooks documented as "collected" return a list per
plugin; the host flattens them, last-registered plugin first (pluggy's LIFO order).  Every hook here is
documented; ``tests/core/test_hookspec_docs.py`` fails when one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .contracts import CommandInfo, ExecutorInfo, FeatureInfo

hookspec = pluggy.HookspecMarker("megalodon")


class MegalodonSpec:
    """The hooks a megalodon plugin may implement."""

    @hookspec
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        """Register task executors.

        Called once when the plugin host loads.  Collected: each plugin returns a list of
        :class:`~megalodon_core.contracts.ExecutorInfo`; names must be unique across all plugins (a
        duplicate makes loading fail loudly).  The ``factory`` of each record is called once per worker
        with the :class:`~megalodon_core.worker_context.WorkerContext`.

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

        Called once when the CLI starts (not for ``--version``).  Collected: each plugin returns a list of
        :class:`~megalodon_core.contracts.CommandInfo`; the callback's parameters are declared the typer
        way (``Annotated[..., typer.Option(...)]``).  A name that clashes with a core command or another
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
    def megalodon_task_resolved(self, task_id: str, run_id: int, state: str, reason: str) -> None:
        """Observe the resolution the worker reported for a run.

        Called after the report call (whether it succeeded or not).  For a run cancelled by the queue,
        ``state`` is ``exception`` and ``reason`` ``canceled`` and nothing was reported.  Results are
        ignored; an exception is logged.

        :param task_id: the task's id.
        :param run_id: the run.
        :param state: ``completed``, ``failed`` or ``exception``.
        :param reason: ``completed``, ``failed`` or the exception reason.
        """
