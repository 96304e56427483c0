"""The JS codecs the registry picks at run time (device-profile scripts, catalogue codecs), built once each."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edge.decoding.base import Decoder

if TYPE_CHECKING:
    from edge.decoding.catalogue import CatalogueIndex
    from edge.decoding.js.runtime import JsLimits, JsRuntime


class JsCodecs:
    """Builds and keeps the JS decoders of device profiles and catalogue codecs under one set of limits.

    The JS engine is imported on first use only: gateways whose devices never need a JS codec do
    not load it.
    """

    def __init__(self, time_limit_s: float, memory_limit: int) -> None:
        self._limits = (time_limit_s, memory_limit)
        self._profiles: dict[str, tuple[str, Decoder]] = {}  # profile id -> (script, decoder)
        self._catalogue: dict[str, Decoder] = {}  # codec key -> decoder

    def limits(self) -> JsLimits:
        """The per-call limits every codec built here runs under."""
        from edge.decoding.js.runtime import JsLimits

        return JsLimits(time_limit=self._limits[0], memory_limit=self._limits[1])

    def profile_decoder(self, profile_id: str, decoder_id: str, script: str) -> Decoder:
        """The decoder of a device profile's own codec script (built again when the script changes).

        Raises:
            ConfigError: the script does not load.
        """
        cached = self._profiles.get(profile_id)
        if cached is not None and cached[0] == script:
            return cached[1]
        from edge.decoding.js.codec import JsCodecDecoder

        decoder = JsCodecDecoder.from_script(decoder_id, script, limits=self.limits())
        self._profiles[profile_id] = (script, decoder)
        return decoder

    def catalogue_decoder(self, key: str, catalogue: CatalogueIndex | None) -> Decoder:
        """The JS decoder of a catalogue codec (built once), with `codec_key` set to `key`.

        Raises:
            LookupError: no index was imported, or it does not hold the codec.
            ConfigError: the codec's script does not load.
        """
        cached = self._catalogue.get(key)
        if cached is not None:
            return cached
        codec = catalogue.codec(key) if catalogue is not None else None
        if codec is None or not codec.uplink_script:
            where = "no codec index (run `edge codecs import`)" if catalogue is None else \
                f"the codec index {catalogue.path} holds no uplink decoder {key}"
            raise LookupError(where)
        from edge.decoding.js.codec import JsCodecDecoder

        # Its field map is found by its key (a native decoder declaring the same TTN codec lists
        # that key in its own map, since both return the same `data`).
        decoder = JsCodecDecoder(key, codec.uplink_script, limits=self.limits(),
                                 name=f"{codec.vendor}/{Path(codec.path).name}", codec_key=key)
        self._catalogue[key] = decoder
        return decoder

    def runtime(self, script: str, name: str) -> JsRuntime:
        """A runtime for a downlink encoder script (built per call: downlinks are rare)."""
        from edge.decoding.js.runtime import JsRuntime

        return JsRuntime(script, name=name, limits=self.limits())
