import { parseArgs } from 'node:util';
import { ShardserveError } from '../../core/errors.js';
import type { Level } from '../../operator/logger.js';
import type { Command } from '../main.js';

const usage = `Usage: shardserve operator [options]

Runs the DistributedInference controller (the operator Deployment's entrypoint).

       shardserve operator --check <file.yaml> [--check <file.yaml> ...]

Options:
  --check <file>             validate DistributedInference YAML offline against the CRD schema and its
                             rules (the same messages the API server gives), then exit
  --kubeconfig <file>        kubeconfig to use (default: $KUBECONFIG, else in-cluster)
  --namespaces <a,b,...>     watch only these namespaces (default: all; env WATCH_NAMESPACES)
  --listen <host:port>       /healthz, /readyz and /metrics address (default 0.0.0.0:8080)
  --leader-elect <bool>      elect a leader on a Lease (default true)
  --lease-namespace <ns>     namespace of the Lease (default: $POD_NAMESPACE, else default)
  --lease-name <name>        name of the Lease (default shardserve-operator)
  --identity <id>            this instance's name in the Lease (default: host name and pid)
  --workers <n>              resources reconciled in parallel (default 4)
  --resync-seconds <n>       re-check every resource this often (default 300)
  --log-level <level>        debug | info | warn | error (default info)
`;

function positiveInt(flag: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new ShardserveError('Usage', `--${flag} '${v}' is not a positive integer`, { param: flag });
  return n;
}

export const operatorCommand: Command = {
  name: 'operator',
  summary: 'run the DistributedInference controller (Kubernetes operator)',
  usage,
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        check: { type: 'string', multiple: true },
        kubeconfig: { type: 'string' },
        namespaces: { type: 'string' },
        listen: { type: 'string' },
        'leader-elect': { type: 'string' },
        'lease-namespace': { type: 'string' },
        'lease-name': { type: 'string' },
        identity: { type: 'string' },
        workers: { type: 'string' },
        'resync-seconds': { type: 'string' },
        'log-level': { type: 'string' },
      },
      strict: true,
    });
    if (values.check) {
      const { checkFile } = await import('./operator-check.js');
      for (const file of values.check) process.stdout.write(`${checkFile(file)}\n`);
      return 0;
    }
    // Loaded when it runs: the other commands do not load the Kubernetes client.
    const { defaultConfig, runOperator } = await import('../../operator/run.js');
    const cfg = defaultConfig();
    const ns = values.namespaces ?? process.env.WATCH_NAMESPACES;
    if (ns !== undefined && ns.trim() !== '' && ns.trim() !== '*') {
      const list = ns.split(',').map((s) => s.trim()).filter(Boolean);
      for (const n of list) if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(n)) throw new ShardserveError('Usage', `--namespaces: '${n}' is not a namespace name`, { param: 'namespaces' });
      cfg.namespaces = list;
    }
    const le = values['leader-elect'];
    if (le !== undefined && le !== 'true' && le !== 'false') throw new ShardserveError('Usage', `--leader-elect '${le}' must be true or false`, { param: 'leader-elect' });
    const level = (values['log-level'] ?? 'info') as Level;
    if (!['debug', 'info', 'warn', 'error'].includes(level)) throw new ShardserveError('Usage', `--log-level '${level}' must be debug, info, warn or error`, { param: 'log-level' });
    Object.assign(cfg, {
      kubeconfig: values.kubeconfig,
      listen: values.listen ?? cfg.listen,
      leaderElection: le !== 'false',
      leaseNamespace: values['lease-namespace'] ?? cfg.leaseNamespace,
      leaseName: values['lease-name'] ?? cfg.leaseName,
      identity: values.identity ?? cfg.identity,
      workers: positiveInt('workers', values.workers, cfg.workers),
      resyncSeconds: positiveInt('resync-seconds', values['resync-seconds'], cfg.resyncSeconds),
      logLevel: level,
    });
    const op = await runOperator(cfg);
    const onSignal = () => void op.stop();
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    await op.done;
    return 0;
  },
};
