// A TTN v2 style codec: only the legacy Decoder(bytes, port), like many popular vendor files.
function Decoder(bytes, port) {
  var decoded = {};
  if (port === 85) {
    decoded.battery = bytes[0];
    decoded.temperature = ((bytes[1] << 8 | bytes[2]) << 16 >> 16) / 10;   // sign-extend 16 bits
    status = 'ok';   // undeclared on purpose: fine in a sloppy-mode global script
    decoded.status = status;
  }
  return decoded;
}
