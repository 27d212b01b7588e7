'use strict';

// GET / answers the local workspace package's greeting; the package comes from
// the workspace, not the registry.
const http = require('node:http');
const ms = require('ms');
const { greeting } = require('@acme/greeting');

const started = Date.now();
const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify({ ok: true, up: ms(Date.now() - started) }));
  }
  res.setHeader('content-type', 'text/plain');
  res.end(greeting());
});

const port = Number(process.env.PORT || 3000);
server.listen(port, () => console.log(`api listening on :${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
