'use strict';

const express = require('express');

const app = express();

app.get('/', (req, res) => res.type('text/plain').send('pnpm-app ok\n'));
app.get('/healthz', (req, res) => res.json({ ok: true }));

const port = Number(process.env.PORT || 3000);
// No host argument: listen on all interfaces, as a pod must.
const server = app.listen(port, () => console.log(`pnpm-app listening on :${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
