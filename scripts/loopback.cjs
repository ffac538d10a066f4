// Preloaded into kinesis-mock (`node -r`): it listens on 0.0.0.0 and offers no
// setting for the address, so force every server onto the loopback interface.
'use strict';
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length > 0 && typeof args[0] === 'object' && args[0] !== null) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' });
  } else if (args.length > 0 && (typeof args[0] === 'number' || /^\d+$/.test(String(args[0])))) {
    const rest = args.slice(1).filter((a, i) => !(i === 0 && typeof a === 'string'));
    args = [args[0], '127.0.0.1', ...rest];
  }
  return listen.apply(this, args);
};
