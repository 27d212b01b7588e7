export const greeting = (name) => `${name} ok\n`;
