// Structured logs: one JSON object per line on stdout (what log pipelines parse).
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Logger = Record<Level, (msg: string, fields?: Record<string, unknown>) => void>;

export function jsonLogger(opts: { level?: Level; write?: (line: string) => void; clock?: () => Date; base?: Record<string, unknown> } = {}): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const write = opts.write ?? ((l: string) => process.stdout.write(l));
  const clock = opts.clock ?? (() => new Date());
  const log = (level: Level) => (msg: string, fields: Record<string, unknown> = {}) => {
    if (ORDER[level] < min) return;
    write(`${JSON.stringify({ time: clock().toISOString(), level, msg, ...opts.base, ...fields })}\n`);
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}
