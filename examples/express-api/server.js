// A small Express API with the dependencies of a real service. Only a few are used
// here; the rest make node_modules the size of a typical production app.
const express = require('express');
const helmet = require('helmet');
const compression = require('compression');
const cors = require('cors');
const { z } = require('zod');
const { formatISO } = require('date-fns');
const { v4: uuid } = require('uuid');
const { greeting } = require('./lib/greeting');

const app = express();
app.use(helmet());
app.use(compression());
app.use(cors());
app.use(express.json());

const Item = z.object({ name: z.string().min(1).max(100) });
const items = new Map();

app.get('/', (req, res) => res.type('text/plain').send(greeting()));
app.get('/healthz', (req, res) => res.json({ ok: true, time: formatISO(new Date()) }));
app.get('/items', (req, res) => res.json([...items.values()]));
app.post('/items', (req, res) => {
  const parsed = Item.safeParse(req.body);
  if (!parsed.success) return res.status(400).json({ error: parsed.error.issues });
  const item = { id: uuid(), ...parsed.data };
  items.set(item.id, item);
  res.status(201).json(item);
});

const port = Number(process.env.PORT || 3000);
const server = app.listen(port, () => console.log(`express-api listening on :${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
