import express, { Request, Response } from 'express';
import { greeting, render } from './greeting';

const app = express();

app.get('/', (_req: Request, res: Response) => {
  res.type('text/plain').send(render(greeting()));
});

app.get('/healthz', (_req: Request, res: Response) => {
  res.json({ ok: true, uptimeSeconds: Math.round(process.uptime()) });
});

const port = Number(process.env.PORT ?? 3000);
// No host argument: listen on all interfaces, as a pod must.
const server = app.listen(port, () => console.log(`typescript-api listening on :${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
