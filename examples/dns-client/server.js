'use strict';

// GET / asks the backend named by BACKEND_URL (a Service name that cluster DNS
// resolves, e.g. http://backend/) and answers what it said.
const http = require('node:http');

const backend = process.env.BACKEND_URL || 'http://backend/';

const server = http.createServer(async (req, res) => {
  if (req.url === '/healthz') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify({ ok: true, backend }));
  }
  if (req.url !== '/') {
    res.statusCode = 404;
    return res.end('not found\n');
  }
  res.setHeader('content-type', 'text/plain');
  try {
    const answer = await fetch(backend, { signal: AbortSignal.timeout(5000) });
    const body = await answer.text();
    if (!answer.ok) throw new Error(`HTTP ${answer.status}: ${body}`);
    res.end(`dns-client got: ${body}`);
  } catch (e) {
    res.statusCode = 502;
    res.end(`dns-client could not reach ${backend}: ${e.cause?.code || e.message}\n`);
  }
});

const port = Number(process.env.PORT || 3000);
// No host argument: listen on all interfaces, as a pod must.
server.listen(port, () => console.log(`dns-client listening on :${port}, backend ${backend}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
