// Elsys generic TLV payload, written for the lorawan-edge tests from Elsys' "Sensor payload"
// document: one type byte, then a fixed-size big-endian value; a repeated type overwrites.
// ES5 only, sloppy mode, no helpers outside this file. Error strings match the native decoder.

var SIZES = {
  0x01: 2, 0x02: 1, 0x03: 3, 0x04: 2, 0x05: 1, 0x06: 2, 0x07: 2, 0x08: 2, 0x09: 6, 0x0A: 2,
  0x0B: 4, 0x0C: 2, 0x0D: 1, 0x0E: 2, 0x0F: 1, 0x10: 4, 0x11: 1, 0x12: 1, 0x13: 65, 0x14: 4,
  0x15: 2, 0x16: 2, 0x17: 4, 0x18: 2, 0x19: 2, 0x1A: 1, 0x1B: 4, 0x1C: 2
};

function unsigned(bytes, at, n) {
  var v = 0;
  for (var k = 0; k < n; k++) {
    v = v * 256 + bytes[at + k];   // multiply, not <<, so 4-byte values stay positive
  }
  return v;
}

function signed(bytes, at, n) {
  var v = unsigned(bytes, at, n);
  var half = Math.pow(2, 8 * n - 1);
  return v >= half ? v - 2 * half : v;
}

function hex2(n) {
  var s = n.toString(16);
  return s.length < 2 ? '0' + s : s;
}

function put(type, bytes, at, out) {
  switch (type) {
    case 0x01: out.temperature = signed(bytes, at, 2) / 10; break;
    case 0x02: out.humidity = bytes[at]; break;
    case 0x03:
      out.x = signed(bytes, at, 1); out.y = signed(bytes, at + 1, 1); out.z = signed(bytes, at + 2, 1);
      break;
    case 0x04: out.light = unsigned(bytes, at, 2); break;
    case 0x05: out.motion = bytes[at]; break;
    case 0x06: out.co2 = unsigned(bytes, at, 2); break;
    case 0x07: out.vdd = unsigned(bytes, at, 2); break;
    case 0x08: out.analog1 = unsigned(bytes, at, 2); break;
    case 0x09: out.lat = signed(bytes, at, 3) / 10000; out.long = signed(bytes, at + 3, 3) / 10000; break;
    case 0x0A: out.pulse1 = unsigned(bytes, at, 2); break;
    case 0x0B: out.pulseAbs = unsigned(bytes, at, 4); break;
    case 0x0C: out.externalTemperature = signed(bytes, at, 2) / 10; break;
    case 0x0D: out.digital = bytes[at]; break;
    case 0x0E: out.distance = unsigned(bytes, at, 2); break;
    case 0x0F: out.accMotion = bytes[at]; break;
    case 0x10:
      out.irInternalTemperature = signed(bytes, at, 2) / 10;
      out.irExternalTemperature = signed(bytes, at + 2, 2) / 10;
      break;
    case 0x11: out.occupancy = bytes[at]; break;
    case 0x12: out.waterleak = bytes[at]; break;
    case 0x13:
      var grid = [];
      for (var i = 0; i < 64; i++) { grid.push(bytes[at] + bytes[at + 1 + i] / 10); }
      out.grideye = grid;
      break;
    case 0x14: out.pressure = unsigned(bytes, at, 4) / 1000; break;
    case 0x15: out.soundPeak = bytes[at]; out.soundAvg = bytes[at + 1]; break;
    case 0x16: out.pulse2 = unsigned(bytes, at, 2); break;
    case 0x17: out.pulseAbs2 = unsigned(bytes, at, 4); break;
    case 0x18: out.analog2 = unsigned(bytes, at, 2); break;
    case 0x19: out.externalTemperature2 = signed(bytes, at, 2) / 10; break;
    case 0x1A: out.digital2 = bytes[at]; break;
    case 0x1B: out.analogUv = signed(bytes, at, 4); break;
    case 0x1C: out.tvoc = unsigned(bytes, at, 2); break;
  }
}

function decodeUplink(input) {
  var bytes = input.bytes, data = {}, i = 0;
  while (i < bytes.length) {
    var type = bytes[i], size = SIZES[type];
    if (size === undefined) {
      return { errors: ['unknown Elsys type 0x' + hex2(type) + ' at byte ' + i] };
    }
    if (i + 1 + size > bytes.length) {
      return { errors: ['Elsys type 0x' + hex2(type) + ' truncated at byte ' + i] };
    }
    put(type, bytes, i + 1, data);
    i += 1 + size;
  }
  return { data: data };
}
