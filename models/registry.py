"""Model Registry operations: register candidates, move the ``production`` alias, keep its history.

MLflow's registry has aliases but no history of where an alias pointed. Every move made here is
recorded in the registry itself, so it survives a new machine pointed at the same tracking server:

* a registered-model tag ``audit.<seq>`` per move (JSON: action, from, to, when, who, why, run id);
* tags on the version that received the alias (``promoted_at``, ``promoted_by``, ``promotion_reason`` ...);
* the run that made the move (the pipeline run, or the run a ``promote`` / ``rollback`` command opens)
  logs the same record as ``audit.json``.

Moves are serialised by a lock that uses the registry's own uniqueness guarantee: creating a registered
model whose name already exists fails atomically on every backend (SQLite, PostgreSQL, a tracking
server), so ``<name>.production-lock`` exists exactly while one process is moving the alias. Two
simultaneous moves therefore run one after the other and are both recorded in order; one that cannot
get the lock in time is refused with a clear message and changes nothing. The same mechanism
(:func:`registry_lock`, with a heartbeat for long holders) keeps two weekly retrains of one model apart
(``<name>.retrain-lock``, see :mod:`train.retrain`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.loading import ModelUnavailable, verify_loads
from models.tracking import HOST_TAG, PID_TAG, owner_alive, owner_tags, retrying

PRODUCTION = "production"
# The newest version that passed its gate but was not promoted (production moved while it was being
# compared, the lock stayed busy): compare it with the new production, or promote it by hand. Only ever
# moved forward (to a higher version); cleared when that version becomes production. Not audited.
CHALLENGER = "challenger"
AUDIT_PREFIX = "audit."
LOCK_SUFFIX = ".production-lock"
# Tags of a lock (a registered model, see registry_lock).
OWNER_TAG, ACQUIRED_TAG, TOKEN_TAG, HEARTBEAT_TAG = "owner", "acquired_at", "lock_token", "heartbeat"
PROMOTIONS = ("promote", "force_promote")
# ``production`` removed on purpose (``monitor --on-degraded withdraw``): the bot finds no model and stays
# flat until a version is promoted. Recorded like every move, ``to_version`` "" (no version holds it).
WITHDRAW = "withdraw"
OUTSIDE = "outside"  # a move found in the registry that this tool did not make (see unrecorded_moves)
# The move in progress, written before the alias moves and deleted once the move is recorded: a process
# killed in between leaves it behind, and the next command completes or discards it (recover).
PENDING_TAG = "pending_move"
LOCK_HEARTBEAT_SECONDS = 5.0
LOCK_STALE_SECONDS = 60.0
MAX_REASON = 500

_log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A refused registry operation; the message says why and what to do. Nothing was changed."""


@dataclass(frozen=True)
class AliasMove:
    """One move of the ``production`` alias."""

    seq: int
    # "promote" (the version passed its gate), "force_promote", "rollback", "withdraw" (the alias was
    # removed; to_version ""), or "outside" (found made outside this tool; to_version "" when the alias
    # was deleted)
    action: str
    from_version: str | None
    to_version: str
    at: str
    by: str
    reason: str
    run_id: str
    note: str = ""  # how it was recorded when not by the process that made it

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AliasMove:
        return cls(**json.loads(text))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", ""))


def _not_found(exc: MlflowException) -> bool:
    text = str(exc).lower()
    return _code(exc) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        _code(exc) == "INVALID_PARAMETER_VALUE" and ("not found" in text or "does not exist" in text)
    )


def get_production(name: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version aliased ``production``, or None when the model or the alias does not exist yet."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def get_version(name: str, version: str, client: MlflowClient | None = None) -> ModelVersion:
    """A model version, or a RegistryError that lists the versions that do exist."""
    client = client or MlflowClient()
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            known = []
        listed = ", ".join(map(str, known)) if known else "none"
        raise RegistryError(f"model '{name}' has no version {version} (versions: {listed})") from exc


def logged_model_id(version: ModelVersion) -> str | None:
    """The LoggedModel a registered version was made from (MLflow 3: its source is ``models:/<model_id>``;
    a SQL registry may leave ``version.model_id`` empty, so the source is read when it is)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(version.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def register_candidate(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of ``name`` from ``model_uri``, created with its tags in one call."""
    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})


def mark_challenger(name: str, version: str, reason: str, client: MlflowClient | None = None) -> bool:
    """Point ``challenger`` at ``version`` (passed its gate, not promoted: ``reason``) unless it already
    points at a newer version (pipelines that finish out of order never move it back). The version gets
    the tag ``not_promoted`` (the reason). Returns whether the alias now points at ``version``."""
    client = retrying(client)
    version = str(version)
    client.set_model_version_tag(name, version, "not_promoted", reason[:MAX_REASON])
    try:
        held = str(client.get_model_version_by_alias(name, CHALLENGER).version)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        held = None
    if held is not None and int(held) > int(version):
        return False
    client.set_registered_model_alias(name, CHALLENGER, version)
    return True


def _model_tags(name: str, client: MlflowClient) -> dict[str, str]:
    try:
        return client.get_registered_model(name).tags
    except MlflowException as exc:
        if _not_found(exc):
            raise RegistryError(f"there is no registered model '{name}'") from exc
        raise


def _recorded(tags: dict[str, str]) -> list[AliasMove]:
    moves = [AliasMove.from_json(v) for k, v in tags.items() if k.startswith(AUDIT_PREFIX)]
    return sorted(moves, key=lambda m: m.seq)


def history(name: str, client: MlflowClient | None = None) -> list[AliasMove]:
    """Every recorded move of ``production``, oldest first."""
    return _recorded(_model_tags(name, retrying(client)))


def holders(moves: list[AliasMove]) -> list[str]:
    """The stack of production versions the history implies: promotions push, a rollback pops back to
    its target, a withdrawal drops the withdrawn version (it is not known-good any more). ``holders[-2]``
    is where the next rollback goes."""
    stack: list[str] = []
    for move in moves:
        if move.action == WITHDRAW:
            stack = [v for v in stack if v != move.from_version]
            continue
        if not move.to_version:  # the alias was deleted outside this tool
            continue
        if move.action == "rollback" and move.to_version in stack:
            del stack[stack.index(move.to_version) + 1 :]
        else:
            stack.append(move.to_version)
    return stack


class LockBusy(RegistryError):
    """A registry lock stayed held by a live holder until the wait ran out; nothing was changed."""


@dataclass
class LockHold:
    """What :func:`registry_lock` yields: the lock, how long getting it took, whether a stale lock was
    broken to get it, and ``lost`` (set by the heartbeat when another process deleted or took the lock)."""

    name: str
    token: str
    waited: float
    broke: str | None = None
    lost: threading.Event = field(default_factory=threading.Event)


@contextmanager
def registry_lock(
    lock: str,
    client: MlflowClient,
    *,
    timeout: float,
    stale: Callable[[RegisteredModel], str | None],
    busy: Callable[[RegisteredModel], str],
    tags: dict[str, str] | None = None,
    description: str = "",
    heartbeat: float | None = None,
):
    """Hold the lock ``lock``: a registered model of that name, which exists only while one process
    holds it (creating a registered model whose name exists fails atomically on every backend).

    A held lock for which ``stale(held)`` returns a reason is deleted and taken; otherwise the caller
    retries every 0.1-0.3 s and raises :class:`LockBusy` with ``busy(held)`` after ``timeout`` seconds
    (0: one look). With ``heartbeat`` the holder refreshes the lock's ``heartbeat`` tag that often from a
    daemon thread, so a long holder can be judged alive by its heartbeat rather than by a fixed age.
    The lock is deleted on release, unless another process has taken it over meanwhile.
    """
    token = uuid.uuid4().hex
    own = {OWNER_TAG: f"{_who()} pid {os.getpid()}", ACQUIRED_TAG: _now(), TOKEN_TAG: token}
    if heartbeat:
        own[HEARTBEAT_TAG] = _now()
    own |= {k: str(v) for k, v in (tags or {}).items()}
    started = time.monotonic()
    deadline = started + timeout
    broke = None
    while True:
        try:
            client.create_registered_model(lock, tags=own, description=description)
            break
        except MlflowException as exc:
            # MLflow's SQL store answers a name clash by looking the existing model up: if its holder
            # released it in between, that lookup says "not found". Either way the lock was taken.
            if _not_found(exc):
                continue
            if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(lock)
        except MlflowException as exc:
            if _not_found(exc):
                continue  # released meanwhile: try again at once
            raise
        reason = stale(held)
        if reason is not None:  # its holder died without releasing it
            _delete_if_same(client, held)
            broke = reason
            continue
        if time.monotonic() >= deadline:
            raise LockBusy(busy(held))
        time.sleep(0.1 + random.random() * 0.2)
    hold = LockHold(lock, token, time.monotonic() - started, broke)
    stop = threading.Event()
    beat = None
    if heartbeat:
        beat = threading.Thread(
            target=_beat, args=(client, hold, heartbeat, stop), name=f"heartbeat {lock}", daemon=True
        )
        beat.start()
    try:
        yield hold
    finally:
        stop.set()
        if beat is not None:
            beat.join(timeout=10)
        _delete_if_mine(client, lock, token)


def _beat(client: MlflowClient, hold: LockHold, every: float, stop: threading.Event) -> None:
    """Refresh the ``heartbeat`` tag of the lock ``hold`` every ``every`` s while it is still ours."""
    while not stop.wait(every):
        try:
            current = client.get_registered_model(hold.name)
        except MlflowException as exc:
            if _not_found(exc):
                hold.lost.set()
                _log.warning("lock %s was deleted by another process while held", hold.name)
                return
            _log.debug("heartbeat of lock %s failed: %s", hold.name, exc)
            continue
        except Exception as exc:  # a store briefly unreachable: the next beat tries again
            _log.debug("heartbeat of lock %s failed: %s", hold.name, exc)
            continue
        if current.tags.get(TOKEN_TAG) != hold.token:
            hold.lost.set()
            _log.warning("lock %s was taken over by %s while held", hold.name, current.tags.get(OWNER_TAG))
            return
        try:
            client.set_registered_model_tag(hold.name, HEARTBEAT_TAG, _now())
        except Exception as exc:
            _log.debug("heartbeat of lock %s failed: %s", hold.name, exc)


def _same_holder(a: RegisteredModel, b: RegisteredModel) -> bool:
    return a.tags.get(TOKEN_TAG) == b.tags.get(TOKEN_TAG) and a.creation_timestamp == b.creation_timestamp


def _delete_if_same(client: MlflowClient, held: RegisteredModel) -> None:
    """Delete a stale lock, unless it was meanwhile replaced by a new holder's (the registry has no
    compare-and-delete: this narrows the window to one round trip)."""
    try:
        current = client.get_registered_model(held.name)
    except MlflowException as exc:
        if _not_found(exc):
            return
        raise
    if _same_holder(current, held):
        _delete_quietly(client, held.name)


def _delete_if_mine(client: MlflowClient, lock: str, token: str) -> None:
    try:
        current = client.get_registered_model(lock)
    except MlflowException as exc:
        if _not_found(exc):
            return
        raise
    if current.tags.get(TOKEN_TAG) == token:
        _delete_quietly(client, lock)


def lock_stale(held: RegisteredModel, stale_after: float) -> str | None:
    """Why the lock ``held`` has no live holder, or None if it may have one: its process on this host
    is gone (pid and start time, :func:`models.tracking.owner_alive`), or, for a holder this host cannot
    see, its heartbeat (else its creation) is older than ``stale_after`` seconds."""
    tags = held.tags
    alive = owner_alive(tags)
    if alive is not None:
        return None if alive else f"its process (pid {tags.get(PID_TAG)} on {tags.get(HOST_TAG)}) is gone"
    try:
        seen = datetime.fromisoformat(tags[HEARTBEAT_TAG]).timestamp()
    except (KeyError, ValueError):
        seen = held.creation_timestamp / 1000
    age = time.time() - seen
    if age <= stale_after:
        return None
    return f"no heartbeat from {tags.get(OWNER_TAG, 'its holder')} for {age:.0f}s (limit {stale_after:.0f}s)"


@contextmanager
def production_lock(
    name: str, client: MlflowClient, timeout: float = 60.0, stale_after: float = LOCK_STALE_SECONDS
):
    """Hold the alias lock of ``name`` (see the module docstring); RegistryError after ``timeout`` s.
    A lock whose holder died is broken at once on its host (the holder's pid is gone), elsewhere once
    its heartbeat (refreshed every few seconds while held) is ``stale_after`` seconds old."""

    def busy(held: RegisteredModel) -> str:
        return (
            f"another promotion or rollback of '{name}' is in progress ({held.tags.get(OWNER_TAG, '?')}, "
            f"since {held.tags.get(ACQUIRED_TAG, '?')}); nothing was changed. Try again; a lock whose "
            f"process died is broken at once on its host, elsewhere once its heartbeat is "
            f"{stale_after:.0f}s old."
        )

    with registry_lock(
        f"{name}{LOCK_SUFFIX}",
        client,
        timeout=timeout,
        stale=lambda held: lock_stale(held, stale_after),
        busy=busy,
        tags=owner_tags(),
        description=f"Lock held while the production alias of '{name}' moves; deleted on release.",
        heartbeat=LOCK_HEARTBEAT_SECONDS,
    ) as hold:
        if hold.broke:
            _log.warning("broke a stale promotion lock of '%s': %s", name, hold.broke)
        yield hold


def _delete_quietly(client: MlflowClient, name: str) -> None:
    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise


def _pending(tags: dict[str, str]) -> AliasMove | None:
    text = tags.get(PENDING_TAG)
    if not text:
        return None
    try:
        return AliasMove.from_json(text)
    except (ValueError, TypeError):
        return None


def unrecorded_moves(
    name: str,
    client: MlflowClient,
    moves: list[AliasMove] | None = None,
    tags: dict[str, str] | None = None,
    current: str | None = None,
) -> list[AliasMove]:
    """Moves of ``production`` the recorded history lacks, in order, numbered after it:

    * a move whose process died after moving the alias and before recording it (its pending record,
      written before the alias moved, says what it was; ``note`` says how it was found);
    * a move made outside this tool (the alias points somewhere the last recorded move did not leave it;
      ``action`` is ``outside``, ``to_version`` "" if the alias was deleted).

    Read-only; :func:`recover` records them."""
    if tags is None:
        tags = _model_tags(name, client)
    if moves is None:
        moves = _recorded(tags)
    if current is None:
        found = get_production(name, client)
        current = str(found.version) if found else None
    seq = moves[-1].seq if moves else 0
    expected = moves[-1].to_version if moves else None
    expected = expected or None
    out: list[AliasMove] = []
    pending = _pending(tags)
    # (a pending withdrawal's to_version is "": it completed when the alias is gone)
    completed = pending is not None and (current or "") == pending.to_version and current != expected
    if pending is not None and pending.seq > seq and completed:
        seq += 1
        out.append(
            replace(
                pending,
                seq=seq,
                note=f"recorded on {_now()} by {_who()}: its process died after moving the alias, "
                "before recording the move",
            )
        )
        expected = current
    if current != expected:
        seq += 1
        out.append(
            AliasMove(
                seq=seq,
                action=OUTSIDE,
                from_version=expected,
                to_version=current or "",
                at=_now(),
                by="unknown",
                reason="production was moved outside this tool"
                + ("" if current else " (the alias was deleted)"),
                run_id="",
                note=f"found on {_now()} by {_who()}; the time of the move is unknown",
            )
        )
    return out


def full_history(name: str, client: MlflowClient | None = None) -> tuple[list[AliasMove], list[AliasMove]]:
    """The recorded moves of ``production`` and, after them, the ones the registry shows but nobody
    recorded yet (:func:`unrecorded_moves`): together, every move, none skipped."""
    client = retrying(client)
    moves = history(name, client)
    return moves, unrecorded_moves(name, client, moves)


def _stamp(client: MlflowClient, name: str, move: AliasMove) -> None:
    """The tags of the version that received the alias (of a withdrawal: of the version that lost it)."""
    if move.action == WITHDRAW:
        withdrawn = {
            "withdrawn_at": move.at,
            "withdrawn_by": move.by,
            "withdrawal_reason": move.reason,
            "withdrawn_by_run": move.run_id,
        }
        for key, value in withdrawn.items():
            client.set_model_version_tag(name, move.from_version, key, value)
        return
    stamp = {
        "promoted_at": move.at,
        "promoted_by": move.by,
        "promotion_reason": move.reason,
        "promotion_action": move.action,
        "promoted_by_run": move.run_id,
        "replaced_version": move.from_version or "",
    }
    for key, value in stamp.items():
        client.set_model_version_tag(name, move.to_version, key, value)


def _record(client: MlflowClient, name: str, move: AliasMove) -> None:
    client.set_registered_model_tag(name, f"{AUDIT_PREFIX}{move.seq:06d}", move.to_json())


def recover(name: str, client: MlflowClient) -> list[AliasMove]:
    """Record what :func:`unrecorded_moves` finds and clear a pending record (a move interrupted before
    its alias moved is discarded: the alias is where it was). Call under the alias lock; returns the
    moves it recorded, each also logged as a warning."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if _not_found(exc):
            return []
        raise
    found = unrecorded_moves(name, client, tags=tags)
    for move in found:
        _record(client, name, move)
        if move.action != OUTSIDE:
            _stamp(client, name, move)
        _log.warning(
            "recorded an unrecorded move of %s production: v%s -> v%s (%s; %s)",
            name,
            move.from_version or "-",
            move.to_version or "-",
            move.action,
            move.note,
        )
    pending = _pending(tags)
    if pending is not None:
        recorded = tags.get(f"{AUDIT_PREFIX}{pending.seq:06d}")
        if recorded and AliasMove.from_json(recorded).to_version == pending.to_version:
            _stamp(client, name, pending)  # recorded, but its process died before stamping the version
        elif not any(m.action == pending.action and m.to_version == pending.to_version for m in found):
            _log.warning(
                "discarded an interrupted move of %s production to v%s: its process died before the "
                "alias moved",
                name,
                pending.to_version,
            )
        client.delete_registered_model_tag(name, PENDING_TAG)
    return found


def _move(
    name: str,
    choose: Callable[[str | None, list[AliasMove]], tuple[str, str]],
    reason: str,
    run_id: str | None,
    client: MlflowClient,
    lock_timeout: float,
) -> AliasMove:
    """Under the lock: record moves nobody recorded (:func:`recover`), ``choose(current, history) ->
    (version, action)`` (may raise RegistryError), prove the version loads, then move the alias and
    record the move. A pending record written before the alias moves makes the two one recoverable
    step: a process killed in between leaves it, and the next command completes the record."""
    with production_lock(name, client, timeout=lock_timeout):
        client = retrying(client)  # a brief store hiccup is retried: every call below is idempotent
        recover(name, client)
        current = get_production(name, client)
        current_version = str(current.version) if current else None
        moves = history(name, client)
        version, action = choose(current_version, moves)
        try:
            verify_loads(name, version)
        except ModelUnavailable as exc:
            raise RegistryError(f"{exc} production stays on v{current_version or '-'}.") from exc
        move = AliasMove(
            seq=(moves[-1].seq if moves else 0) + 1,
            action=action,
            from_version=current_version,
            to_version=version,
            at=_now(),
            by=_who(),
            reason=reason[:MAX_REASON],
            run_id=run_id or "",
        )
        client.set_registered_model_tag(name, PENDING_TAG, move.to_json())
        try:
            client.set_registered_model_alias(name, PRODUCTION, version)
            _record(client, name, move)
        except Exception:
            # Never leave the alias somewhere the history does not say.
            if current_version is None:
                client.delete_registered_model_alias(name, PRODUCTION)
            else:
                client.set_registered_model_alias(name, PRODUCTION, current_version)
            client.delete_registered_model_tag(name, PENDING_TAG)
            raise
        _stamp(client, name, move)
        client.delete_registered_model_tag(name, PENDING_TAG)
        _retire_challenger(client, name, version)
    _notify(name, move)
    return move


def _retire_challenger(client: MlflowClient, name: str, version: str) -> None:
    """A challenger that became production is no longer one (the move is done: never fails it)."""
    try:
        if str(client.get_model_version_by_alias(name, CHALLENGER).version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    except MlflowException as exc:
        if not _not_found(exc):
            _log.warning("%s v%s is production but still @%s: %s", name, version, CHALLENGER, exc)


def _notify(name: str, move: AliasMove) -> None:
    from models.notify import notify

    event = {"rollback": "rollback", WITHDRAW: "withdrawal"}.get(move.action, "promotion")
    notify(
        event,
        f"{name}: production v{move.from_version or '-'} -> v{move.to_version or '-'} ({move.action})",
        {"reason": move.reason, "by": move.by, "run_id": move.run_id},
    )


_ANY = object()


def promote(
    name: str,
    version: str,
    reason: str,
    force: bool = False,
    run_id: str | None = None,
    client: MlflowClient | None = None,
    lock_timeout: float = 60.0,
    expect_current: str | None | object = _ANY,
) -> AliasMove:
    """Point ``production`` at ``version``. A version that did not pass its gate needs ``force`` and a
    reason; that is recorded as a ``force_promote``. With ``expect_current`` (a version, or None for "no
    production yet") the move is refused if production changed meanwhile: a challenger is promoted only
    over the champion it was compared with."""
    client = client or MlflowClient()
    version = str(version)
    mv = get_version(name, version, client)
    gate = mv.tags.get("gate", "unknown")
    if gate != "passed":
        if not force:
            failed = mv.tags.get("gate_failed_checks", "")
            raise RegistryError(
                f"version {version} of '{name}' did not pass its gate (gate={gate}"
                f"{', failed: ' + failed if failed else ''}); promote it anyway with force=true and a reason"
            )
        if not reason.strip():
            raise RegistryError(f"a forced promotion of version {version} (gate={gate}) needs a reason")

    def choose(current: str | None, moves: list[AliasMove]) -> tuple[str, str]:
        if current == version:
            raise RegistryError(f"version {version} of '{name}' is already production; nothing changed")
        if expect_current is not _ANY and current != expect_current:
            raise RegistryError(
                f"production of '{name}' moved to v{current} after version {version} was compared with "
                f"v{expect_current or '-'}; not promoted. Compare it with v{current} or promote it by hand."
            )
        return version, "promote" if gate == "passed" else "force_promote"

    return _move(name, choose, reason or "promoted", run_id, client, lock_timeout)


def rollback(
    name: str,
    version: str | None = None,
    reason: str = "",
    run_id: str | None = None,
    client: MlflowClient | None = None,
    lock_timeout: float = 60.0,
    expect_current: str | None | object = _ANY,
) -> AliasMove:
    """Move ``production`` back to the version that held it before the current one (or to ``version``,
    which must have been production before or have passed its gate). With ``expect_current`` the move is
    refused if production is no longer that version (the monitor rolls back only what it judged)."""
    client = client or MlflowClient()
    if version is not None:
        version = str(version)
        target = get_version(name, version, client)

    def choose(current: str | None, moves: list[AliasMove]) -> tuple[str, str]:
        if current is None:
            raise RegistryError(f"'{name}' has no production version; there is nothing to roll back")
        _check_unmoved(name, current, expect_current)
        if version is None:
            # The version production held before the current one: moves made outside this tool count
            # (recover has recorded them), so after a hand move this goes back to where it was moved from.
            stack = holders(moves)
            if len(stack) < 2 or stack[-1] != current:
                raise RegistryError(
                    f"'{name}' has no earlier production version on record to roll back to "
                    f"(production is v{current}); nothing changed. Name a version to move to instead."
                )
            return stack[-2], "rollback"
        if version == current:
            raise RegistryError(f"version {version} of '{name}' is already production; nothing changed")
        was_production = any(m.to_version == version and m.action != OUTSIDE for m in moves)
        if not was_production and target.tags.get("gate") != "passed":
            raise RegistryError(
                f"version {version} of '{name}' was never production and did not pass its gate; "
                "roll back only to a known-good version, or use promote with force=true and a reason"
            )
        return version, "rollback"

    return _move(name, choose, reason or "rollback", run_id, client, lock_timeout)


def _check_unmoved(name: str, current: str | None, expect_current: str | None | object) -> None:
    """RegistryError (nothing changed) when production is no longer the version a decision judged."""
    if expect_current is not _ANY and current != expect_current:
        raise RegistryError(
            f"production of '{name}' moved to v{current} after v{expect_current or '-'} was judged; "
            "nothing changed"
        )


def withdraw(
    name: str,
    reason: str,
    run_id: str | None = None,
    client: MlflowClient | None = None,
    lock_timeout: float = 60.0,
    expect_current: str | None | object = _ANY,
) -> AliasMove:
    """Remove ``production``: a bot loading ``models:/<name>@production`` is told it was withdrawn
    (:func:`models.loading.load_model`) and stays flat until a version is promoted. The same lock, record
    (action ``withdraw``, ``to_version`` "") and notification as every move; the withdrawn version gets
    ``withdrawn_at`` / ``withdrawn_by`` / ``withdrawal_reason`` / ``withdrawn_by_run`` tags. Refused
    (RegistryError, nothing changed) when there is no production version, or, with ``expect_current``,
    when production is no longer that version."""
    client = client or MlflowClient()
    with production_lock(name, client, timeout=lock_timeout):
        client = retrying(client)
        recover(name, client)
        current = get_production(name, client)
        current_version = str(current.version) if current else None
        if current_version is None:
            raise RegistryError(f"'{name}' has no production version; there is nothing to withdraw")
        _check_unmoved(name, current_version, expect_current)
        moves = history(name, client)
        move = AliasMove(
            seq=(moves[-1].seq if moves else 0) + 1,
            action=WITHDRAW,
            from_version=current_version,
            to_version="",
            at=_now(),
            by=_who(),
            reason=(reason or "withdrawn")[:MAX_REASON],
            run_id=run_id or "",
        )
        client.set_registered_model_tag(name, PENDING_TAG, move.to_json())
        try:
            client.delete_registered_model_alias(name, PRODUCTION)
            _record(client, name, move)
        except Exception:
            client.set_registered_model_alias(name, PRODUCTION, current_version)  # as the history says
            client.delete_registered_model_tag(name, PENDING_TAG)
            raise
        _stamp(client, name, move)
        client.delete_registered_model_tag(name, PENDING_TAG)
    _notify(name, move)
    return move


def withdrawal(name: str, client: MlflowClient | None = None) -> AliasMove | None:
    """The recorded withdrawal that left ``name`` without a production version, or None (production
    exists, was never set, or was last removed some other way)."""
    client = client or MlflowClient()
    try:
        moves = history(name, client)
    except RegistryError:  # no such registered model
        return None
    if not moves or moves[-1].action != WITHDRAW or get_production(name, client) is not None:
        return None
    return moves[-1]


def describe_withdrawal(name: str, move: AliasMove) -> str:
    """One line: when, by whom and what, and why production was withdrawn."""
    by = f"{move.by}" + (f", run {move.run_id}" if move.run_id else "")
    return (
        f"'{name}'@{PRODUCTION} was withdrawn on {move.at} (v{move.from_version} removed by {by}; "
        f"move #{move.seq}): {move.reason}"
    )


def status(name: str, client: MlflowClient | None = None) -> dict:
    """The production version with its gate result and metrics, the ordered history of moves, and the
    moves nobody recorded yet (``unrecorded``, with a ``warning``; the next promote or rollback records
    them)."""
    client = retrying(client)
    moves, missing = full_history(name, client)
    current = get_production(name, client)
    out: dict = {
        "model_name": name,
        "production": None,
        "history": [asdict(m) for m in moves],
        "unrecorded": [asdict(m) for m in missing],
    }
    if current is not None:
        tags = current.tags
        out["production"] = {
            "version": str(current.version),
            "gate": tags.get("gate"),
            "holdout_macro_f1": tags.get("holdout_macro_f1"),
            "baseline_macro_f1": tags.get("baseline_macro_f1"),
            "features": tags.get("features"),
            "bar": tags.get("bar"),
            "promoted_at": tags.get("promoted_at"),
            "promoted_by": tags.get("promoted_by"),
            "promotion_reason": tags.get("promotion_reason"),
            "run_id": current.run_id,
        }
    if current is None and not missing and moves and moves[-1].action == WITHDRAW:
        out["withdrawn"] = asdict(moves[-1]) | {"message": describe_withdrawal(name, moves[-1])}
    if missing:
        out["warning"] = unrecorded_warning(missing)
    return out


def unrecorded_warning(missing: list[AliasMove], recorded: bool = False) -> str:
    """One line on the moves :func:`unrecorded_moves` found (``recorded``: and :func:`recover` recorded)."""
    parts = []
    for m in missing:
        where = f"v{m.from_version or '-'} -> v{m.to_version or '-'}"
        if m.action == OUTSIDE and not m.to_version:
            parts.append(f"the production alias (v{m.from_version or '-'}) was deleted outside this tool")
        elif m.action == OUTSIDE:
            parts.append(f"production was moved outside this tool ({where})")
        else:
            parts.append(f"a {m.action} {where} at {m.at} was not recorded (its process died)")
    if recorded:
        seqs = f"#{missing[0].seq}" + (f"..#{missing[-1].seq}" if len(missing) > 1 else "")
        return "; ".join(parts) + f"; recorded in the history as move {seqs}"
    return "; ".join(parts) + "; the next promote or rollback records it"


def record_unrecorded(name: str, client: MlflowClient | None = None, lock_timeout: float = 10.0) -> str:
    """For commands that read production without moving it (``monitor``): record the moves nobody
    recorded (a move made in the UI or with the plain MLflow client, or one whose process died) under the
    alias lock, as a promote would. Returns one line on what was found, "" when nothing was; the lock
    only when something was found. A busy lock or a store error records nothing (the line says the next
    promote or rollback will): the caller's own work never fails on it."""
    client = retrying(client)
    missing: list[AliasMove] = []
    try:
        missing = unrecorded_moves(name, client)
        if not missing:
            return ""
        with production_lock(name, client, timeout=lock_timeout):
            recorded = recover(name, client)
    except (RegistryError, MlflowException):  # no such model, the lock stayed busy, the store failed
        return unrecorded_warning(missing) if missing else ""
    return unrecorded_warning(recorded, recorded=True) if recorded else ""
