"""Loads a TTN-style codec (YAML + .js) or a ChirpStack codec script and exposes it as a Decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext, Field
from edge.decoding.examples import read_yaml
from edge.decoding.js.replies import EncodeResult
from edge.decoding.js.runtime import JsLimits, JsRuntime
from edge.errors import ConfigError


class JsCodecDecoder:
    """A Decoder backed by a JS codec: TTN's decodeUplink contract, run by JsRuntime.

    `codecs` are the field-map keys of its output (`ttn:<vendor>/<stem>` for a TTN codec YAML,
    `chirpstack:<vendor>/<stem>` for a device-profiles codec); the registry normalises with the
    first that has a map. `fields` is the legacy table, used only when no map is found.
    """

    def __init__(self, decoder_id: str, source: str, *, fields: Mapping[str, Field] | None = None,
                 limits: JsLimits | None = None, name: str | None = None, pinned_now: float | None = None,
                 codec_key: str = "", codecs: Sequence[str] = ()) -> None:
        """Build a decoder from a script's source.

        Args:
            decoder_id: `<vendor>/<model>`, lowercase with dashes.
            source: the codec script.
            fields: how `data` keys map to the vocabulary (default: none).
            limits: per-call limits for the JS runtime.
            name: how errors and logs name the script (default: the decoder id).
            pinned_now: for tests: the time the codec's clock shows (see JsRuntime).
            codec_key: `<catalogue>:<vendor>/<codec>` when the script came from a catalogue index,
                e.g. "ttn:elsys/elsys" or "chirpstack:milesight/am307"; names its field map.
            codecs: the field-map keys of this codec's output.

        Raises:
            ConfigError: the script does not load (see JsRuntime).
        """
        self.id = decoder_id
        self.fields: Mapping[str, Field] = MappingProxyType(dict(fields or {}))
        self.codec_key = codec_key
        # The field-map keys of this codec's output; a catalogue codec answers to its own key.
        self.codecs = tuple(codecs) or ((codec_key,) if codec_key else ())
        self.runtime = JsRuntime(source, name=name or decoder_id, limits=limits, pinned_now=pinned_now)

    @classmethod
    def from_script(cls, decoder_id: str, source: str, *, fields: Mapping[str, Field] | None = None,
                    limits: JsLimits | None = None, codecs: Sequence[str] = ()) -> JsCodecDecoder:
        """A ChirpStack device-profile codec (the same decodeUplink contract) as a Decoder."""
        return cls(decoder_id, source, fields=fields, limits=limits, codecs=codecs)

    @classmethod
    def from_yaml(cls, yaml_path: str | Path, *, decoder_id: str | None = None,
                  fields: Mapping[str, Field] | None = None, limits: JsLimits | None = None,
                  pinned_now: float | None = None) -> JsCodecDecoder:
        """A TTN codec definition: `uplinkDecoder.fileName` names the .js file next to the YAML.

        The id defaults to `<vendor-dir>/<yaml-stem>`, e.g. `elsys/ers-codec`; `codec_key` is
        `ttn:<vendor-dir>/<yaml-stem>`.

        Raises:
            ConfigError: the YAML or the script cannot be read, or the script does not load.
        """
        path = Path(yaml_path)
        script, source = codec_script(path)
        # A TTN-format codec YAML has the catalogue key of its place in that layout, e.g. ttn:elsys/elsys.
        return cls(decoder_id or f"{path.parent.name}/{path.stem}", source, fields=fields, limits=limits,
                   name=f"{path.parent.name}/{script.name}", pinned_now=pinned_now,
                   codec_key=f"ttn:{path.parent.name}/{path.stem}")

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode one uplink in a fresh JS context; failures come back in `errors`, never raised."""
        try:
            return self.runtime.decode_uplink(payload, fport, context.variables, context.recv_time or None)
        except Exception as exc:  # noqa: BLE001 - the Decoder contract; the runtime catches all it knows
            return DecodeResult(None, errors=[f"{type(exc).__name__}: {exc}"])

    def encode(self, data: Mapping[str, Any], fport: int | None = None,
               variables: Mapping[str, str] | None = None) -> EncodeResult:
        """Encode a downlink with the codec's encodeDownlink (or legacy Encoder/Encode)."""
        return self.runtime.encode_downlink(data, fport, variables)


def codec_script(yaml_path: Path, section: str = "uplinkDecoder") -> tuple[Path, str]:
    """The script a TTN codec YAML's `section` (uplinkDecoder, downlinkEncoder, ...) names, and its text.

    Raises:
        ConfigError: the YAML has no fileName there, or the script cannot be read.
    """
    doc = read_yaml(yaml_path)
    part = doc.get(section)
    file_name = part.get("fileName") if isinstance(part, Mapping) else None
    if not isinstance(file_name, str) or not file_name:
        raise ConfigError([f"{yaml_path}: {section}.fileName is missing (no JS codec to load)"])
    script = _codec_file(yaml_path, file_name)
    try:
        return script, script.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{yaml_path}: cannot read {file_name}: {exc}"]) from None


def _codec_file(yaml_path: Path, file_name: str) -> Path:
    """The script named by fileName; it must stay inside the YAML's vendor folder, as in TTN's repo."""
    folder = yaml_path.parent.resolve()
    script = (folder / file_name).resolve()
    if Path(file_name).is_absolute() or not script.is_relative_to(folder):
        raise ConfigError([f"{yaml_path}: uplinkDecoder.fileName {file_name!r} points outside {folder}"])
    return script
