"""Chooses the decoder for each uplink and turns its output into readings."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.decoding.base import Decoder, DecodeResult, DeviceContext
from edge.decoding.fieldmap import EMPTY, FieldMap, MapIndex, default_index, map_for
from edge.decoding.normalize import normalise
from edge.model import DecodeStatus, Reading, Uplink

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
    for ChirpStack's `object`; the device cache sets it from a catalogue index, else the device or
    profile tag `codec` or config `decoding.object_maps` apply.
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
    """

    def __init__(self, decoders: Iterable[Decoder], rules: Sequence[Rule] = (), use_object: bool = True,
                 tag: str = "decoder", js_time_limit_s: float = 0.1, js_memory_limit: int = 16 << 20,
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
        self._js_limits = (js_time_limit_s, js_memory_limit)
        self._profile_codecs: dict[str, tuple[str, Decoder]] = {}  # profile id -> (script, decoder)
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

    def _normalised(self, status: int, data: Mapping[str, Any] | None, key: str, fmap: FieldMap, decoder: str,
                    time: float) -> Decoded:
        result = normalise(data, fmap, time)
        count_key = self._count_key(key or f"decoder:{decoder}") if result.unmapped else key
        return Decoded(status, result.readings, decoder, codec=count_key, unmapped=len(result.unmapped))

    def ids(self) -> list[str]:
        """Every id a decoder can be selected by."""
        return sorted(self._by_id)

    def get(self, decoder_id: str) -> Decoder | None:
        """The decoder with this id or alias."""
        return self._by_id.get(decoder_id)

    def choose(self, uplink: Uplink, hints: DeviceHints = NO_HINTS) -> str:
        """The id of the decoder chosen for this uplink, PROFILE_JS, or '' for none.

        Order: the device's `decoder` tag (cached device first, else the event's tags), config
        rules, the device profile's `decoder` tag, the profile's own JS codec.
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
        native = self.native_for_profile(uplink.device.device_profile_name, hints.profile_tags.get("ttn_codec", ""))
        if native:
            return native
        if hints.profile_js:
            return PROFILE_JS
        return ""

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

    def _profile_decoder(self, hints: DeviceHints) -> Decoder:
        cached = self._profile_codecs.get(hints.profile_id)
        if cached is not None and cached[0] == hints.profile_js:
            return cached[1]
        # Imported here: the JS engine is loaded only on gateways whose profiles use it.
        from edge.decoding.js.codec import JsCodecDecoder
        from edge.decoding.js.runtime import JsLimits

        decoder = JsCodecDecoder.from_script(
            f"{PROFILE_JS}/{hints.profile_id}", hints.profile_js,
            limits=JsLimits(time_limit=self._js_limits[0], memory_limit=self._js_limits[1]))
        self._profile_codecs[hints.profile_id] = (hints.profile_js, decoder)
        return decoder

    def decode(self, uplink: Uplink, hints: DeviceHints = NO_HINTS) -> Decoded:
        """Decode one uplink; never raises."""
        chosen = self.choose(uplink, hints)
        if chosen:
            decoder: Decoder | None
            if chosen == PROFILE_JS:
                try:
                    decoder = self._profile_decoder(hints)
                except Exception as exc:  # noqa: BLE001 - a profile script that does not load fails this uplink
                    return Decoded(DecodeStatus.FAILED, [], chosen, f"profile codec does not load: {exc}")
            else:
                decoder = self._by_id.get(chosen)
            if decoder is None:
                return Decoded(DecodeStatus.FAILED, [], chosen, f"no decoder with id {chosen!r}")
            context = DeviceContext(uplink.device.dev_eui, hints.variables, hints.tags or uplink.device.tags,
                                    uplink.time)
            try:
                result: DecodeResult = decoder.decode(uplink.payload, uplink.fport, context)
                if result.errors:
                    return Decoded(DecodeStatus.FAILED, [], chosen, "; ".join(map(str, result.errors)))
                if chosen == PROFILE_JS:
                    key = self.codec_for(uplink, hints)
                    fmap = (self._maps.get(key) if key else None) or EMPTY
                    key = key or f"{PROFILE_JS}:{hints.profile_id}"  # counted per profile while unmapped
                else:
                    key, fmap = self.map_for(decoder)
                return self._normalised(DecodeStatus.DECODED, result.data, key, fmap, chosen, uplink.time)
            except Exception as exc:  # noqa: BLE001 - a broken decoder costs one uplink, never the pipeline
                return Decoded(DecodeStatus.FAILED, [], chosen, f"{type(exc).__name__}: {exc}")
        if self._use_object and uplink.object is not None:
            key = self.codec_for(uplink, hints)
            fmap = (self._maps.get(key) if key else None) or EMPTY
            try:
                return self._normalised(DecodeStatus.CHIRPSTACK, uplink.object, key or "object:chirpstack", fmap,
                                        "chirpstack", uplink.time)
            except Exception as exc:  # noqa: BLE001 - whatever ChirpStack's codec returned costs one uplink
                return Decoded(DecodeStatus.FAILED, [], "chirpstack", f"{type(exc).__name__}: {exc}")
        return Decoded(DecodeStatus.UNDECODED, [])
