export interface Greeting {
  app: string;
  status: 'ok';
}

export function greeting(): Greeting {
  return { app: 'typescript-api', status: 'ok' };
}

export function render(g: Greeting): string {
  return `${g.app} ${g.status}\n`;
}
