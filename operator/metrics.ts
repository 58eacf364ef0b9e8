// Prometheus metrics of the operator, in their own registry (no module-level singletons).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export class OperatorMetrics {
  readonly registry = new Registry();
  private readonly reconciles = new Counter({ name: 'shardserve_operator_reconcile_total', help: 'Reconciles by result.', labelNames: ['result'], registers: [this.registry] });
  private readonly errors = new Counter({ name: 'shardserve_operator_reconcile_errors_total', help: 'Reconciles that failed (retried with backoff).', registers: [this.registry] });
  private readonly duration = new Histogram({
    name: 'shardserve_operator_reconcile_duration_seconds',
    help: 'Time of one reconcile.',
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [this.registry],
  });
  private readonly writes = new Counter({ name: 'shardserve_operator_api_writes_total', help: 'API writes by verb and kind.', labelNames: ['verb', 'kind'], registers: [this.registry] });
  readonly leader = new Gauge({ name: 'shardserve_operator_leader', help: '1 while this instance holds the leader Lease.', registers: [this.registry] });
  private depthFn: () => number = () => 0;

  constructor() {
    const depth = () => this.depthFn();
    new Gauge({
      name: 'shardserve_operator_queue_depth',
      help: 'Resources waiting for or in a reconcile.',
      registers: [this.registry],
      collect() {
        this.set(depth());
      },
    });
  }

  queueDepth(fn: () => number): void {
    this.depthFn = fn;
  }

  reconciled(result: 'success' | 'error', seconds: number): void {
    this.reconciles.inc({ result });
    if (result === 'error') this.errors.inc();
    this.duration.observe(seconds);
  }

  wrote(verb: string, kind: string): void {
    this.writes.inc({ verb, kind });
  }

  /** Total writes so far (tests and the benchmark read it). */
  async writeCount(filter?: (labels: Record<string, string | number>) => boolean): Promise<number> {
    const m = await this.writes.get();
    return m.values.filter((v) => !filter || filter(v.labels)).reduce((s, v) => s + v.value, 0);
  }
}
