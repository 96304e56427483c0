// Like some vendor libraries: adds helpers to Object.prototype and Array.prototype, exports
// for Node behind a `typeof module` guard, and logs on one branch.
"use strict";
var sawPollution = Object.prototype.hasOwnProperty('edgeHelper') || typeof [].edgeSum === 'function';
Object.prototype.edgeHelper = function () { return 'helper'; };
Object.defineProperty(Array.prototype, 'edgeSum', {
  value: function () { var s = 0; for (var i = 0; i < this.length; i++) { s += this[i]; } return s; },
  writable: true, configurable: true
});

function decodeUplink(input) {
  if (input.fPort === 3) {
    console.log('config frame', { port: input.fPort, bytes: input.bytes });
  }
  return { data: { sum: input.bytes.edgeSum(), helper: ({}).edgeHelper(), sawPollution: sawPollution } };
}

if (typeof module !== 'undefined' && module.exports) {
  module.exports = { decodeUplink: decodeUplink };
}
