"use strict";
// Strict for the whole file, like some vendor libraries. The undeclared assignment below only
// throws when that branch runs (fPort 99); every other uplink decodes.
function decodeUplink(input) {
  if (input.fPort === 99) {
    leaked = input.bytes[0];
  }
  var strict = (function () { return this === undefined; })();
  return { data: { strict: strict, first: input.bytes[0] } };
}
