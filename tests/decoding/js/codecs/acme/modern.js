// ES2015+ syntax that real vendor codecs use: let/const, arrow functions, classes, templates,
// destructuring, default parameters, spread and a top-level const entry point.
const FLAGS = Object.freeze(['door', 'tamper', 'lowBattery']);

class Reader {
  constructor(bytes) { this.bytes = bytes; this.at = 0; }
  u8() { return this.bytes[this.at++]; }
  u16(le = false) {
    const [a, b] = [this.u8(), this.u8()];
    return le ? (b << 8) | a : (a << 8) | b;
  }
}

const flags = (byte) => FLAGS.filter((_, i) => (byte >> i) & 1);

const decodeUplink = ({ bytes, fPort }) => {
  if (fPort !== 2) {
    return { errors: [`unknown FPort ${fPort}`] };
  }
  const r = new Reader(bytes);
  let data = { counter: r.u16(), level: r.u16(true) };
  data = { ...data, alarms: flags(r.u8()) };
  return { data, warnings: data.counter === 0 ? ['counter reset'] : [] };
};
