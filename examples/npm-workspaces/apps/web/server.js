'use strict';

const http = require('node:http');
const ms = require('ms');
const fs = require('node:fs');
const path = require('node:path');
const { hello } = require('@acme/greeting');

// Written by the build step (`npm run build`), from the local package.
const greeting = fs.readFileSync(path.join(__dirname, 'dist/greeting.txt'), 'utf8');

const started = Date.now();

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://web');
  if (url.pathname === '/') {
    res.setHeader('content-type', 'text/plain');
    return res.end(greeting);
  }
  if (url.pathname === '/hello') {
    res.setHeader('content-type', 'text/html');
    return res.end(hello(url.searchParams.get('name') || 'you'));
  }
  if (url.pathname === '/uptime') {
    res.setHeader('content-type', 'text/plain');
    return res.end(`${ms(Date.now() - started, { long: true })}\n`);
  }
  res.statusCode = 404;
  res.end('not found\n');
});

const port = Number(process.env.PORT || 3000);
// No host argument: listen on all interfaces, as a pod must.
server.listen(port, () => console.log(`web listening on :${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
