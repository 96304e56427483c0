"""Chooses the decoder for each uplink and turns its output into readings."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.decoding import limits
from edge.decoding.base import Decoder, DecodeResult, DeviceContext
from edge.decoding.fieldmap import EMPTY, FieldMap, MapIndex, default_index, map_for
from edge.decoding.jscodecs import JsCodecs
from edge.decoding.normalize import normalise
from edge.errors import OverLimit
from edge.model import DecodeStatus, Reading, Uplink

if TYPE_CHECKING:
    from edge.decoding.catalogue import CatalogueIndex, Match
    from edge.decoding.js.replies import EncodeResult

log = logging.getLogger(__name__)

# At most this many codec keys are counted apart for `unmapped`; the rest share "other", so a
# fleet of unmapped codecs cannot grow the counters table or the metrics' label set without bound.
MAX_UNMAPPED_KEYS = 200
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Rule:
    """Config rule: any listed criterion that matches selects `decoder` (first rule wins)."""

    decoder: str
    dev_eui: frozenset[str] = frozenset()
    device_profile: frozenset[str] = frozenset()
    application: frozenset[str] = frozenset()

    def matches(self, uplink: Uplink) -> bool:
        """True when the uplink's device is named by this rule."""
        dev = uplink.device
        return (
            dev.dev_eui in self.dev_eui
            or bool(self.device_profile & {dev.device_profile_name, dev.device_profile_id})
            or bool(self.application & {dev.application_name, dev.application_id})
        )


@dataclass(frozen=True, slots=True)
class DeviceHints:
    """What the ChirpStack device registry cache knows beyond the MQTT event (issue #4).

    `profile_js` is the device profile's own codec script when its codec runtime is JS. `codec`
    names the field map (`<catalogue>:<id>`, e.g. "ttn:elsys/elsys") for the profile's JS codec and
    for ChirpStack's `object`; when it is empty the device or profile tag `codec` or config
    `decoding.object_maps` apply.
    """

    tags: Mapping[str, str] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict)
    profile_id: str = ""
    profile_tags: Mapping[str, str] = field(default_factory=dict)
    profile_js: str = ""
    codec: str = ""


PROFILE_JS = "profile-js"  # the choice "run the device profile's own JS codec"
NO_HINTS = DeviceHints()


@dataclass(slots=True)
class Decoded:
    """The outcome of decoding one uplink."""

    status: int
    readings: list[Reading]
    decoder: str = ""
    error: str = ""
    codec: str = ""  # the field map's key that applied (or would have), for the `unmapped` counter
    unmapped: int = 0  # leaves no map entry covered: sent unit-less under their own key


class DecoderRegistry:
    """Decoders by id (and alias), plus the rules that pick one for a device.

    Selection order: the device's ChirpStack tag `decoder`, then the config rules, then
    ChirpStack's `object` if present, else the uplink stays undecoded (raw kept).
    `catalogue` is the index `edge codecs import` built (None: no catalogue codecs).
    """

    def __init__(self, decoders: Iterable[Decoder], rules: Sequence[Rule] = (), use_object: bool = True,
                 tag: str = "decoder", js_time_limit_s: float = 0.1, js_memory_limit: int = 16 << 20,
                 catalogue: CatalogueIndex | None = None, cooldown: CoolDown | None = None,
                 maps: MapIndex | None = None, object_maps: Mapping[str, str] | None = None) -> None:
        self._by_id: dict[str, Decoder] = {}
        self._by_codec: dict[str, str] = {}  # TTN codec id -> decoder id
        for decoder in decoders:
            for name in (decoder.id, *getattr(decoder, "aliases", ())):
                self._by_id.setdefault(name, decoder)
            for codec in getattr(decoder, "ttn_codecs", ()):
                self._by_codec.setdefault(codec, decoder.id)
        self._rules = tuple(rules)
        self._use_object = use_object
        self._tag = tag
        self._js = JsCodecs(js_time_limit_s, js_memory_limit)
        self.catalogue = catalogue
        # A call that takes the JS time limit or longer counts as a timeout for the cool-down.
        self.cooldown = cooldown if cooldown is not None else CoolDown(slow_s=js_time_limit_s)
        self._maps = maps if maps is not None else default_index()
        self._object_maps = dict(object_maps or {})
        self._decoder_maps: dict[int, tuple[str, FieldMap]] = {}  # id(decoder) -> its map
        self._counted: set[str] = set()  # codec keys counted apart for `unmapped`

    def map_for(self, decoder: Decoder) -> tuple[str, FieldMap]:
        """The codec key and field map that normalise a decoder's output (cached per decoder)."""
        found = self._decoder_maps.get(id(decoder))
        if found is None:
            found = self._decoder_maps[id(decoder)] = map_for(decoder, self._maps)
        return found

    def codec_for(self, uplink: Uplink, hints: DeviceHints) -> str:
        """The map key for a profile's own JS codec or ChirpStack's `object`, or ''.

        Order: the hint (catalogue index), the device's then the profile's tag `codec`, then
        `decoding.object_maps` by profile name, then by profile id.
        """
        tags = hints.tags or uplink.device.tags
        dev = uplink.device
        return (hints.codec or tags.get("codec") or hints.profile_tags.get("codec")
                or self._object_maps.get(dev.device_profile_name)
                or self._object_maps.get(dev.device_profile_id or hints.profile_id) or "")

    def _count_key(self, key: str) -> str:
        if key in self._counted:
            return key
        if len(self._counted) >= MAX_UNMAPPED_KEYS:
            return OTHER
        self._counted.add(key)
        return key


    def ids(self) -> list[str]:
        """Every id a decoder can be selected by."""
        return sorted(self._by_id)

    def get(self, decoder_id: str) -> Decoder | None:
        """The decoder with this id or alias."""
        return self._by_id.get(decoder_id)

    def choose(self, uplink: Uplink, hints: DeviceHints = NO_HINTS) -> str:
        """The id of the decoder chosen for this uplink, PROFILE_JS, or '' for none.

        Order: the device's `decoder` tag (cached device first, else the event's tags), config
        rules, the device profile's `decoder` tag, a `codec` tag naming a catalogue codec (device,
        then profile), a native decoder for a TTN Device Repository profile, a catalogue codec the
        profile's name, id or vendor/device tags point to, the profile's own JS codec.
        """
        tagged = (hints.tags or uplink.device.tags).get(self._tag)
        if tagged:
            return tagged
        for rule in self._rules:
            if rule.matches(uplink):
                return rule.decoder
        profile_tagged = hints.profile_tags.get(self._tag)
        if profile_tagged:
            return profile_tagged
        explicit = self.catalogue_match(uplink, hints, tags_only=True)
        if explicit is not None:
            held = self.catalogue is not None and self.catalogue.codec(explicit.key) is not None
            # Without the codec in the index, the tag still names the field map: for the profile's own
            # JS codec or ChirpStack's `object`, when the device has one. Only with neither does the
            # uplink fail, with a reason that says to import the catalogue.
            if held or not (hints.profile_js or (self._use_object and uplink.object is not None)):
                return explicit.key
        native = self.native_for_profile(uplink.device.device_profile_name, hints.profile_tags.get("ttn_codec", ""))
        if native:
            return native
        matched = self.catalogue_match(uplink, hints) if self.catalogue is not None else None
        if matched is not None and self.catalogue is not None and self.catalogue.codec(matched.key) is not None:
            return matched.key
        if hints.profile_js:
            return PROFILE_JS
        return ""

    def catalogue_match(self, uplink: Uplink, hints: DeviceHints = NO_HINTS, *,
                        tags_only: bool = False) -> Match | None:
        """The catalogue codec for this device and why (see CatalogueIndex.match), or None.

        With `tags_only`, only an explicit `codec` tag counts; such a tag names a codec even when
        no index was imported (the uplink then fails with a message that says so).
        """
        from edge.decoding.catalogue import CODEC_TAG, Match, is_key

        device_tags = hints.tags or uplink.device.tags
        if self.catalogue is None or tags_only:
            for where, tags in (("The device has", device_tags), ("Its device profile has", hints.profile_tags)):
                key = tags.get(CODEC_TAG, "")
                if is_key(key):
                    held = "" if self.catalogue is None or self.catalogue.codec(key.strip()) else \
                        " (the codec index does not hold it)"
                    return Match(key.strip(), f"{where} the tag {CODEC_TAG}={key.strip()}{held}.")
            return None
        return self.catalogue.match(uplink.device.device_profile_name, hints.profile_id or
                                    uplink.device.device_profile_id, device_tags, hints.profile_tags)

    def native_for_profile(self, profile_name: str, ttn_codec: str = "") -> str:
        """The native decoder for a device profile that came from the TTN Device Repository, or ''.

        A profile tag `ttn_codec` (e.g. `elsys/ers-codec`) names the codec a native decoder declares;
        otherwise ChirpStack's profile templates are named "<Vendor> <Model>" (e.g. "Elsys ERS CO2",
        "Milesight IoT AM307"), which maps to the id `elsys/ers-co2` or `milesight-iot/am307`.
        The native decoder returns the same `data` as the vendor codec, only faster.
        """
        if ttn_codec and ttn_codec in self._by_codec:
            return self._by_codec[ttn_codec]
        words = profile_name.lower().replace("_", " ").split()
        for split in range(1, len(words)):
            candidate = f"{'-'.join(words[:split])}/{'-'.join(words[split:])}"
            if candidate in self._by_id:
                return candidate
        return ""

    def catalogue_decoder(self, key: str) -> Decoder:
        """The JS decoder of a catalogue codec (built once), with `codec_key` set to `key`.

        Raises:
            LookupError: no index was imported, or it does not hold the codec.
            ConfigError: the codec's script does not load.
        """
        return self._js.catalogue_decoder(key, self.catalogue)

    def encode(self, uplink: Uplink, data: Mapping[str, Any], fport: int | None,
               hints: DeviceHints = NO_HINTS) -> tuple[str, EncodeResult] | None:
        """Encode a downlink with the codec this device's uplinks are decoded with, if it has an encoder.

        Returns (the codec: a catalogue key or PROFILE_JS, the result), or None when the chosen
        decoder has no encodeDownlink (native decoders, ChirpStack's `object`).
        """
        chosen = self.choose(uplink, hints)
        script, name = "", chosen
        if chosen == PROFILE_JS:
            script, name = hints.profile_js, f"{PROFILE_JS}/{hints.profile_id}"
        elif ":" in chosen and self.catalogue is not None:
            codec = self.catalogue.codec(chosen)
            if codec is not None:
                script = codec.downlink_script
        if not script:
            return None
        return chosen, self._js.runtime(script, name).encode_downlink(data, fport, hints.variables)

    def decode(self, uplink: Uplink, hints: DeviceHints = NO_HINTS) -> Decoded:
        """Decode one uplink; never raises.

        Whatever a decoder returns, and ChirpStack's `object`, is checked against the bounds of
        edge/decoding/limits.py before it is normalised: output over them fails this uplink (raw
        kept), so the normaliser only ever sees bounded, JSON-shaped data. A decoder that keeps
        timing out is set aside for a while (CoolDown): its uplinks are stored raw as failed.
        """
        try:
            return self._decode(uplink, hints)
        except Exception as exc:  # noqa: BLE001 - one uplink's decode never fails the pipeline
            return Decoded(DecodeStatus.FAILED, [], "", limits.reason(exc))

    def _decode(self, uplink: Uplink, hints: DeviceHints) -> Decoded:
        chosen = self.choose(uplink, hints)
        if chosen and uplink.fport == 0:
            # FPort 0 carries MAC commands only (LoRaWAN 1.0.x §4.3.2): nothing for a codec.
            return Decoded(DecodeStatus.UNDECODED, [])
        if chosen:
            decoder: Decoder | None
            key = f"{PROFILE_JS}/{hints.profile_id}" if chosen == PROFILE_JS else chosen
            cooldown = self.cooldown
            if cooldown.resting_any and cooldown.resting(key):
                return Decoded(DecodeStatus.FAILED, [], chosen, "cool-down")
            if chosen == PROFILE_JS:
                try:
                    decoder = self._js.profile_decoder(hints.profile_id, key, hints.profile_js)
                except Exception as exc:  # noqa: BLE001 - a profile script that does not load fails this uplink
                    return Decoded(DecodeStatus.FAILED, [], chosen,
                                   f"profile codec does not load: {limits.reason(exc)}")
            elif chosen not in self._by_id and ":" in chosen:
                try:
                    decoder = self.catalogue_decoder(chosen)
                except Exception as exc:  # noqa: BLE001 - a missing or broken catalogue codec fails this uplink
                    return Decoded(DecodeStatus.FAILED, [], chosen, f"catalogue codec {chosen}: {limits.reason(exc)}")
            else:
                decoder = self._by_id.get(chosen)
            if decoder is None:
                return Decoded(DecodeStatus.FAILED, [], chosen, f"no decoder with id {limits.truncate(chosen, 64)!r}")
            context = DeviceContext(uplink.device.dev_eui, hints.variables, hints.tags or uplink.device.tags,
                                    uplink.time)
            # CPU time of this thread, as the JS sandbox counts it: a busy machine does not make a
            # sound codec look slow, a looping one is slow whatever the load.
            started = time.thread_time()
            try:
                result: DecodeResult = decoder.decode(uplink.payload, uplink.fport, context)
            except Exception as exc:  # noqa: BLE001 - a broken decoder costs one uplink, never the pipeline
                return Decoded(DecodeStatus.FAILED, [], chosen, limits.reason(exc))
            finally:
                took = time.thread_time() - started
                if took >= cooldown.slow_s:
                    cooldown.took(key, took)
            if chosen == PROFILE_JS:
                map_key = self.codec_for(uplink, hints)
                fmap = (self._maps.get(map_key) if map_key else None) or EMPTY
                map_key = map_key or f"{PROFILE_JS}:{hints.profile_id}"  # counted per profile while unmapped
            else:
                map_key, fmap = self.map_for(decoder)
            return self._normalised(result, map_key, fmap, chosen, uplink.time)
        if self._use_object and uplink.object is not None:
            return self._object(uplink, hints)
        return Decoded(DecodeStatus.UNDECODED, [])

    def _object(self, uplink: Uplink, hints: DeviceHints) -> Decoded:
        """ChirpStack's own codec output, normalised with the map its device or profile names."""
        map_key = self.codec_for(uplink, hints)
        fmap = (self._maps.get(map_key) if map_key else None) or EMPTY
        return self._normalised(DecodeResult(uplink.object), map_key or "object:chirpstack", fmap, "chirpstack",
                                uplink.time, DecodeStatus.CHIRPSTACK)

    def _normalised(self, result: Any, map_key: str, fmap: FieldMap, decoder: str, received: float,
                    status: int = DecodeStatus.DECODED) -> Decoded:
        """A decoder's result, bounded (limits.py) and normalised; over the bounds it fails the uplink."""
        if not isinstance(result, DecodeResult):
            return Decoded(DecodeStatus.FAILED, [], decoder,
                           f"decoder returned a {type(result).__name__}, not a DecodeResult")
        errors = result.errors
        if errors:
            return Decoded(DecodeStatus.FAILED, [], decoder, limits.summarise_messages(errors))
        data = result.data
        try:
            if result.warnings:
                limits.check_messages(result.warnings, "warnings")
            if data is not None and type(data) is not dict and not isinstance(data, Mapping):
                raise OverLimit(f"data is a {type(data).__name__}, not an object")
            limits.check_data(data)
        except OverLimit as exc:
            return Decoded(DecodeStatus.FAILED, [], decoder, f"codec output over the limits: {exc}")
        try:
            normalised = normalise(data, fmap, received)
        except Exception as exc:  # noqa: BLE001 - the normaliser's failure costs this uplink only
            return Decoded(DecodeStatus.FAILED, [], decoder, f"normalising failed: {limits.reason(exc)}")
        count_key = self._count_key(map_key or f"decoder:{decoder}") if normalised.unmapped else map_key
        return Decoded(status, normalised.readings, decoder, codec=count_key, unmapped=len(normalised.unmapped))


class CoolDown:
    """Sets aside decoders that keep timing out, so one looping codec cannot slow every other device.

    A call of `slow_s` or longer (CPU time of the calling thread) counts as a timeout. `after` of
    them within `window_s` rest the decoder for `rest_s`: meanwhile its uplinks are stored raw as
    failed ("cool-down", `edge redecode` takes them later) and one WARNING says so. `after` = 0
    turns this off.
    """

    def __init__(self, slow_s: float = 0.1, after: int = 3, window_s: float = 60.0, rest_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slow_s = slow_s
        self.after = after
        self.window_s = window_s
        self.rest_s = rest_s
        self.clock = clock
        self._timeouts: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        self.rested = 0  # how many times a decoder was set aside (tests, status)

    @property
    def resting_any(self) -> bool:
        """True while some decoder is set aside (a cheap test before `resting`)."""
        return bool(self._until)

    def resting(self, key: str) -> bool:
        """True while `key` is set aside."""
        until = self._until.get(key)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._until[key]
        log.info("Decoder %s is used again after its cool-down.", key, extra={"decoder": key})
        return False

    def took(self, key: str, seconds: float) -> None:
        """Note how long one call of `key` took."""
        if self.after <= 0 or seconds < self.slow_s:
            return
        now = self.clock()
        recent = self._timeouts.setdefault(key, deque(maxlen=self.after))
        recent.append(now)
        if len(recent) >= self.after and now - recent[0] <= self.window_s:
            recent.clear()
            self._until[key] = now + self.rest_s
            self.rested += 1
            log.warning("Decoder %s timed out %d times within %g s; its uplinks are stored raw as failed"
                        " (reason \"cool-down\") for the next %g s so it cannot slow other devices. `edge redecode`"
                        " decodes them later.", key, self.after, self.window_s, self.rest_s, extra={"decoder": key})
        if len(self._timeouts) > 10000:  # bounded: forget the oldest decoder's history
            self._timeouts.pop(next(iter(self._timeouts)))
