"""The one wrapper around the JS engine (quickjs-ng): sandbox, per-call CPU limit, memory cap, no I/O globals."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import quickjs  # type: ignore[import-untyped]  # quickjs-ng ships neither stubs nor py.typed

from edge.decoding.base import DecodeResult
from edge.decoding.js.replies import CallResult, EncodeResult, downlink_result, uplink_result
from edge.decoding.js.scripts import (
    CALLABLE_ROUTINES,
    DOWNLINK_ENTRY_POINTS,
    ES_MODULE,
    IMPORT_BUFFER,
    MENTIONS_BUFFER,
    MODULE_FOOTER,
    PINNED_CLOCK,
    SETTLE,
    UPLINK_ENTRY_POINTS,
    buffer_script,
    node_path,
    preludes,
)
from edge.errors import ConfigError

log = logging.getLogger(__name__)

# Date's local-time getters (getHours, toString, new Date(y, m, d) ...) follow the process time
# zone, and TTN, ChirpStack and the codecs' own examples all assume UTC. QuickJS reads the zone
# through libc, so the only complete fix is the process-wide TZ; this changes local time for the
# whole gateway process (log timestamps included) once, when this module is imported.
if os.environ.get("TZ") != "UTC":
    os.environ["TZ"] = "UTC"
    time.tzset()

# Loading the npm `buffer` package (buffer_script) is trusted code with its own CPU budget (not the codec's).
_BUFFER_TIME_LIMIT: Final = 1.0
# A bounded number of promise jobs after a module's evaluation (top-level await).
_MAX_JOBS: Final = 10_000

# A retry after a CPU-time interrupt may raise the engine's budget at most this much (see _invoke).
_MAX_RETRY_SCALE: Final = 16.0


class _Context(Protocol):
    """The slice of quickjs.Context this module uses (the package has no type information)."""

    def eval(self, code: str) -> Any: ...
    def module(self, code: str) -> Any: ...
    def execute_pending_job(self) -> bool: ...
    def set_time_limit(self, seconds: float) -> None: ...
    def set_memory_limit(self, limit: int) -> None: ...
    def set_max_stack_size(self, limit: int) -> None: ...


_JSException: Final[type[Exception]] = quickjs.JSException
_StackOverflow: Final[type[Exception]] = quickjs.StackOverflow


@dataclass(frozen=True, slots=True)
class JsLimits:
    """Per-call resource limits for codec scripts.

    `time_limit` is CPU seconds for one call (script evaluation plus the entry point); ChirpStack's
    `max_execution_time` defaults to 100 ms too. `memory_limit` and `stack_limit` are bytes.
    `console_lines`/`console_chars` bound what one call may log (at DEBUG, else swallowed).
    """

    time_limit: float = 0.1
    memory_limit: int = 16 * 1024 * 1024
    stack_limit: int = 256 * 1024
    console_lines: int = 20
    console_chars: int = 500

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise ValueError(f"time_limit must be a positive number of seconds, not {self.time_limit!r}")
        # Below about 1 MiB the engine cannot even set up its built-ins and every call fails.
        if self.memory_limit < 1024 * 1024:
            raise ValueError(f"memory_limit must be at least 1 MiB, not {self.memory_limit!r}")
        if self.stack_limit < 16 * 1024:
            raise ValueError(f"stack_limit must be at least 16 KiB, not {self.stack_limit!r}")
        if self.console_lines < 0 or self.console_chars < 1:
            raise ValueError("console_lines must be >= 0 and console_chars >= 1")


class _Failure(Exception):
    """One call failed; the message is the error string reported to the caller.

    Never leaves this module: the public methods turn it into `errors` or a ConfigError.
    """


class _TimedOut(Exception):
    """The engine interrupted the call because its CPU budget ran out (never leaves this module)."""


def _describe(message: str) -> str:
    """First line of a QuickJS error plus the innermost stack frame, e.g. 'Error: x (at f (<input>:3:9))'."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "(empty error)"
    head = lines[0][:300]
    frame = next((line for line in lines[1:] if line.startswith("at ")), None)
    return f"{head} ({frame})" if frame else head


class JsRuntime:
    """A codec script that runs, per call, in a fresh sandboxed QuickJS context.

    Every call creates a new runtime and context, evaluates the script as a sloppy-mode global
    script (or, if it has `export` statements, as an ES module whose entry points are then made
    global) and calls the entry point, so global state and prototype writes never carry over
    from one uplink to the next. The context has the ECMAScript built-ins plus a `console`
    whose output goes to this module's logger at DEBUG (bounded per call) and, for scripts
    that name it, Node's `Buffer` as ChirpStack v4 provides it (the npm `buffer` package, see
    buffer_script); nothing else: no require, process, std/os modules, timers, file, network
    or environment access.

    The binding offers no bytecode or snapshot API, so Buffer cannot be loaded once per process:
    it is evaluated in each fresh context (~3 ms on x86-64), and only for scripts whose text names it.

    Calls never raise for anything the script does: syntax and runtime errors, a CPU-time or
    memory overrun and stack overflow all come back as error strings. Instances are immutable
    and may be shared between threads; each call uses its context on the calling thread only.
    """

    def __init__(self, source: str, *, name: str = "codec.js", limits: JsLimits | None = None,
                 pinned_now: float | None = None) -> None:
        """Check the script once: it must evaluate within the limits and define an entry point.

        Args:
            source: the codec script (TTN codec file or ChirpStack device-profile codec).
            name: how errors and log lines name the script.
            limits: per-call limits; the defaults match ChirpStack's 100 ms.
            pinned_now: for tests only: the codec's clock (`new Date()`, `Date.now()`) shows this
                time, in seconds since the epoch, instead of the real one.

        Raises:
            ConfigError: the script does not parse, fails or overruns while evaluating, or
                defines none of the entry points (decodeUplink, Decoder, Decode, encodeDownlink,
                Encoder, Encode).
        """
        self.name = name
        self.limits = limits or JsLimits()
        # An ES module is evaluated as one (strict, own scope), its entry points then made global.
        self.is_module = bool(ES_MODULE.search(source))
        self._source = IMPORT_BUFFER.sub("", source) + MODULE_FOOTER if self.is_module else source
        self._buffer = buffer_script() if MENTIONS_BUFFER.search(source) else None
        self._clock = None if pinned_now is None else PINNED_CLOCK % (pinned_now * 1000.0,)
        if MENTIONS_BUFFER.search(source) and self._buffer is None:
            log.warning("Codec %s uses Buffer, but the npm package `buffer` is not installed (looked in %s);"
                        " install node-buffer (scripts/setup does)", name, ", ".join(node_path()))
        self._preludes = preludes(self.limits.console_lines, self.limits.console_chars)
        # QuickJS (through this binding) cannot keep compiled bytecode for reuse in another
        # context, so "compiling once" means proving here that the script loads; each call
        # then parses it again in its fresh context. Measured on x86-64: the context costs
        # ~60 µs, parsing ~25-45 µs per KB of script; ~0.2 ms per uplink for a 3.4 KB codec.
        try:
            found = self._invoke("probe", "null", 0.0)
        except _Failure as exc:
            raise ConfigError([f"{name}: {exc}"]) from None
        self.entry_points: frozenset[str] = frozenset(k for k, v in found.items() if v is True)
        if not self.entry_points:
            wanted = ", ".join(UPLINK_ENTRY_POINTS + DOWNLINK_ENTRY_POINTS)
            raise ConfigError([f"{name}: the script defines none of the functions {wanted}"])

    def decode_uplink(self, payload: bytes, fport: int, variables: Mapping[str, str] | None = None,
                      recv_time: float | None = None) -> DecodeResult:
        """Run decodeUplink (or the legacy Decoder/Decode) on one uplink; never raises.

        Args:
            payload: the FRMPayload; the script sees it as `input.bytes`, a plain array of numbers.
            fport: the LoRaWAN FPort (`input.fPort`).
            variables: device variables (`input.variables`, an object of strings).
            recv_time: receive time in seconds since the epoch (`input.recvTime`, a Date);
                None or 0 means now.

        Returns:
            The codec's data, warnings and errors after a JSON round trip. A non-empty `errors`
            from the codec, or any failure of the call, is reported in `errors`.
        """
        try:
            if recv_time is None or recv_time <= 0:
                recv_time = time.time()
            input_json = json.dumps({"bytes": list(payload), "fPort": fport, "variables": dict(variables or {})})
            reply = self._invoke("uplink", input_json, recv_time * 1000.0)
            return uplink_result(self.name, reply)
        except _Failure as exc:
            return DecodeResult(None, errors=[str(exc)])
        except Exception as exc:  # Broad on purpose (logged): the Decoder contract says never raise.
            log.debug("Codec %s: unexpected failure", self.name, exc_info=True)
            return DecodeResult(None, errors=[f"{type(exc).__name__}: {exc}"])

    def encode_downlink(self, data: Mapping[str, Any], fport: int | None = None,
                        variables: Mapping[str, str] | None = None) -> EncodeResult:
        """Run encodeDownlink (or the legacy Encoder/Encode) on `data`; never raises.

        The script gets `input.data`, `input.variables` and, when given, `input.fPort`. It must
        return `bytes` as integers 0-255; its `fPort`, if any, overrides `fport`.
        """
        try:
            input_doc: dict[str, Any] = {"data": dict(data), "variables": dict(variables or {})}
            if fport is not None:
                input_doc["fPort"] = fport
            reply = self._invoke("downlink", json.dumps(input_doc), 0.0)
            return downlink_result(self.name, reply, fport)
        except _Failure as exc:
            return EncodeResult(None, fport, errors=[str(exc)])
        except Exception as exc:  # Broad on purpose (logged): same contract as decode_uplink.
            log.debug("Codec %s: unexpected failure", self.name, exc_info=True)
            return EncodeResult(None, fport, errors=[f"{type(exc).__name__}: {exc}"])

    def call_routine(self, routine: str, input_doc: Any, expected: Any = None) -> CallResult:
        """Call a routine of CALLABLE_ROUTINES with `input_doc` as it is; never raises.

        This is how the catalogues' own test runners call a codec: no `recvTime` or `variables` are
        added, and the expected value is serialised by the same engine for ChirpStack's comparison.
        """
        if routine not in CALLABLE_ROUTINES:
            return CallResult(error=f"unknown routine {routine!r}")
        try:
            reply = self._invoke("call", json.dumps({"routine": routine, "input": input_doc, "expected": expected}),
                                 0.0)
        except _Failure as exc:
            return CallResult(error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a test run reports it against this test
            return CallResult(error=f"{type(exc).__name__}: {exc}")
        if reply.get("entry") is None:
            return CallResult(error=f"{self.name} does not define {routine}")
        value = reply.get("value")
        return CallResult(json.loads(value) if isinstance(value, str) else None, reply.get("got"), reply.get("want"))

    def _invoke(self, mode: str, input_json: str, recv_ms: float) -> dict[str, Any]:
        """Run the prelude, the script and one call in a fresh context; the parsed JSON reply.

        QuickJS measures its time limit with clock(), the CPU time of the whole process, so CPU
        burnt by other threads at the same moment counts against the codec. When the engine
        interrupts a call although this thread used less than the limit, the call is repeated
        once with the engine's budget scaled by the observed share (at most _MAX_RETRY_SCALE
        times); a fresh context makes the repeat free of side effects.
        """
        limit = self.limits.time_limit
        scale = 1.0
        while True:
            thread0, process0 = time.thread_time(), time.process_time()
            try:
                return self._invoke_once(mode, input_json, recv_ms, limit * scale)
            except _TimedOut:
                used_thread = time.thread_time() - thread0
                used_process = time.process_time() - process0
                if scale == 1.0 and used_thread < 0.8 * limit:
                    scale = min(1.25 * used_process / max(used_thread, limit / _MAX_RETRY_SCALE), _MAX_RETRY_SCALE)
                    scale = max(scale, 1.25)
                    log.debug("Codec %s was interrupted after %.1f ms of its own CPU time (%.1f ms process-wide); "
                              "retrying with %.1fx the budget", self.name, used_thread * 1e3, used_process * 1e3, scale)
                    continue
                raise _Failure(f"{self.name} exceeded the CPU time limit of {limit * 1e3:g} ms") from None

    def _invoke_once(self, mode: str, input_json: str, recv_ms: float, budget: float) -> dict[str, Any]:
        context = cast(_Context, quickjs.Context())
        context.set_memory_limit(self.limits.memory_limit)
        context.set_max_stack_size(self.limits.stack_limit)
        collect = log.isEnabledFor(logging.DEBUG)
        start = time.process_time()
        phase = "script"
        run: Any = None

        def arm() -> None:
            # The engine restarts its clock at every eval and call, so hand each step what is left.
            context.set_time_limit(max(budget - (time.process_time() - start), 0.001))

        try:
            arm()
            run = context.eval(self._preludes[mode, collect])
            if self._buffer is not None:
                # Trusted library code: its own budget, then the codec's clock starts afresh.
                context.set_time_limit(_BUFFER_TIME_LIMIT)
                context.eval(self._buffer)
                start = time.process_time()
            if self._clock is not None:
                arm()
                context.eval(self._clock)
            arm()
            if self.is_module:
                self._evaluate_module(context, budget, start)
            else:
                context.eval(self._source)
            phase = "call"
            arm()
            out = run(mode, input_json, recv_ms)
        except _StackOverflow as exc:
            raise _Failure(f"stack overflow in {self.name}: {self._describe(str(exc))}") from None
        except _JSException as exc:
            message = str(exc)
            if message.startswith("InternalError: interrupted"):
                raise _TimedOut from None
            # When QuickJS cannot even allocate the error object it throws a bare null (catchable,
            # and the memory is freed again while unwinding), so `throw null` looks the same; an
            # out-of-memory is by far the likelier cause.
            if message.strip() == "null" or message.startswith("InternalError: out of memory"):
                raise _Failure(
                    f"{self.name} ran out of memory (limit {self.limits.memory_limit / 1048576:g} MiB)"
                ) from None
            if message.startswith("RangeError: Maximum call stack size exceeded"):
                raise _Failure(f"stack overflow in {self.name}: {self._describe(message)}") from None
            where = "while evaluating the script" if phase == "script" else "in the call"
            raise _Failure(f"JS error {where}: {self._describe(message)}") from None
        finally:
            if collect and run is not None:
                self._drain_console(context, run, budget)
        if not isinstance(out, str):
            raise _Failure(f"{self.name}: the result could not be serialised to JSON")
        reply = json.loads(out)
        if not isinstance(reply, dict):
            raise _Failure(f"{self.name}: unexpected reply from the runtime")
        return reply

    def _evaluate_module(self, context: _Context, budget: float, start: float) -> None:
        """Evaluate the codec as an ES module; its rejection is raised like a script's exception.

        QuickJS evaluates a module asynchronously: the binding returns a promise and queued jobs
        (top-level await) run one by one, each under what is left of the CPU budget.
        """
        settle = context.eval(SETTLE)
        state = settle(context.module(self._source))
        jobs = 0
        while True:
            context.set_time_limit(max(budget - (time.process_time() - start), 0.001))
            if not context.execute_pending_job():
                break
            jobs += 1
            if jobs > _MAX_JOBS or time.process_time() - start > budget:
                raise _TimedOut
        outcome = json.loads(state())
        if outcome["error"] is not None:
            raise _JSException(outcome["error"])
        if not outcome["done"]:
            raise _JSException("Error: the module did not finish evaluating (it awaits something that never settles)")

    def _drain_console(self, context: _Context, run: Any, budget: float) -> None:
        """Log what the codec wrote to console during this call (also after a failure)."""
        try:
            context.set_time_limit(budget)
            buffered = json.loads(run("console", "null", 0.0))
        except Exception:  # noqa: BLE001 - after an out-of-memory even this may fail; the output is only debug aid
            return
        for level, text in buffered["lines"]:
            log.debug("Codec %s console.%s: %s", self.name, level, text)
        if buffered["dropped"]:
            log.debug("Codec %s: further console output of this call dropped", self.name)

    def _describe(self, message: str) -> str:
        # Every script is evaluated as "<input>"; name the codec instead.
        return _describe(message).replace("<input>", self.name)


def js_literal(text: str, limits: JsLimits | None = None) -> Any:
    """Evaluate `text` as one JS expression in a fresh sandbox and return its value as JSON data.

    For ChirpStack's test files, which its runner pastes into a script (`const tests = <file>;`),
    so comments, trailing commas, hex numbers and unquoted keys are all allowed.

    Raises:
        ConfigError: the text is not an expression, fails, or its value cannot be serialised.
    """
    limits = limits or JsLimits(time_limit=1.0)
    context = cast(_Context, quickjs.Context())
    context.set_memory_limit(limits.memory_limit)
    context.set_max_stack_size(limits.stack_limit)
    context.set_time_limit(limits.time_limit)
    try:
        # The newlines keep a line comment on the file's last line from swallowing the parentheses.
        out = context.eval("JSON.stringify((\n" + text + "\n))")
    except (_JSException, _StackOverflow) as exc:
        raise ConfigError([f"not a JS literal: {_describe(str(exc))}"]) from None
    if not isinstance(out, str):
        raise ConfigError(["the literal has no JSON value"])
    return json.loads(out)
