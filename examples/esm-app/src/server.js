import { readFile } from 'node:fs/promises';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { greeting } from './greeting.js';

// Top-level await and import.meta.url: read our own package.json next to src/.
const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));

const app = new Hono();
app.get('/', (c) => c.text(greeting(pkg.name)));
app.get('/healthz', (c) => c.json({ ok: true, version: pkg.version }));

const port = Number(process.env.PORT ?? 3000);
// hostname 0.0.0.0: all interfaces, as a pod must.
const server = serve({ fetch: app.fetch, port, hostname: '0.0.0.0' }, (info) =>
  console.log(`${pkg.name} listening on ${info.address}:${info.port}`),
);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
