// Leader election on a coordination.k8s.io/v1 Lease (client-go's protocol: the holder renews
// renewTime; anyone may take a Lease not renewed for leaseDurationSeconds; updates carry the
// resourceVersion so two candidates never both win).
import { KubeApiError, type KubeApi } from './kube.js';
import type { Logger } from './logger.js';

export type LeaderOptions = {
  api: KubeApi;
  namespace: string;
  name: string;
  identity: string;
  clock: () => Date;
  log: Logger;
  leaseDurationSeconds?: number;
  retryPeriodMs?: number;
};

export class LeaderElector {
  private leading = false;
  private stopped = false;
  private timer?: NodeJS.Timeout;
  private lostHandlers: (() => void)[] = [];
  private readonly duration: number;
  private readonly retryMs: number;

  constructor(private readonly o: LeaderOptions) {
    this.duration = o.leaseDurationSeconds ?? 15;
    this.retryMs = o.retryPeriodMs ?? 5000;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  onLost(fn: () => void): void {
    this.lostHandlers.push(fn);
  }

  private path(name?: string): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${this.o.namespace}/leases${name ? `/${name}` : ''}`;
  }

  private micro(d: Date): string {
    return d.toISOString().replace('Z', '000Z');
  }

  /** One attempt to acquire or renew; returns whether we lead afterwards. */
  async tryAcquireOrRenew(): Promise<boolean> {
    const now = this.o.clock();
    let lease: { metadata: { resourceVersion: string }; spec?: Record<string, unknown> } | undefined;
    try {
      lease = await this.o.api.get(this.path(this.o.name));
    } catch (e) {
      if (!(e instanceof KubeApiError && e.status === 404)) throw e;
    }
    const spec = {
      holderIdentity: this.o.identity,
      leaseDurationSeconds: this.duration,
      renewTime: this.micro(now),
    };
    if (!lease) {
      try {
        await this.o.api.create(this.path(), { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: this.o.name, namespace: this.o.namespace }, spec: { ...spec, acquireTime: this.micro(now), leaseTransitions: 0 } });
        return true;
      } catch (e) {
        if (e instanceof KubeApiError && e.status === 409) return false;
        throw e;
      }
    }
    const cur = lease.spec ?? {};
    const holder = cur.holderIdentity as string | undefined;
    const renewed = cur.renewTime ? Date.parse(cur.renewTime as string) : 0;
    const expired = !holder || renewed + Number(cur.leaseDurationSeconds ?? this.duration) * 1000 < now.getTime();
    if (holder !== this.o.identity && !expired) return false;
    const next = {
      ...lease,
      spec: {
        ...cur,
        ...spec,
        ...(holder !== this.o.identity ? { acquireTime: this.micro(now), leaseTransitions: Number(cur.leaseTransitions ?? 0) + 1 } : {}),
      },
    };
    try {
      await this.o.api.replace(this.path(this.o.name), next, 'Lease');
      return true;
    } catch (e) {
      if (e instanceof KubeApiError && e.status === 409) return false;
      throw e;
    }
  }

  /** Resolves once this instance leads; keeps renewing until stop(). */
  async run(): Promise<void> {
    for (;;) {
      if (this.stopped) throw new Error('leader election stopped');
      try {
        if (await this.tryAcquireOrRenew()) break;
      } catch (e) {
        this.o.log.warn('leader election attempt failed', { error: String(e) });
      }
      await new Promise((r) => setTimeout(r, this.retryMs));
    }
    this.leading = true;
    this.o.log.info('became leader', { lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });
    let lastRenew = this.o.clock().getTime();
    const renew = async () => {
      if (this.stopped) return;
      let ok = false;
      try {
        ok = await this.tryAcquireOrRenew();
      } catch (e) {
        this.o.log.warn('lease renewal failed', { error: String(e) });
      }
      const now = this.o.clock().getTime();
      if (ok) lastRenew = now;
      // Give up before the lease could expire under another candidate (client-go's renewDeadline).
      if (!ok && (now - lastRenew > (this.duration * 1000 * 2) / 3 || !(await this.stillHolder()))) {
        this.leading = false;
        this.o.log.error('lost leadership', { identity: this.o.identity });
        for (const h of this.lostHandlers) h();
        return;
      }
      this.timer = setTimeout(renew, this.retryMs);
    };
    this.timer = setTimeout(renew, this.retryMs);
  }

  private async stillHolder(): Promise<boolean> {
    try {
      const lease = await this.o.api.get(this.path(this.o.name));
      return lease.spec?.holderIdentity === this.o.identity;
    } catch {
      return true; // cannot tell: keep trying until the renew deadline
    }
  }

  /** Stops renewing and, when leading, releases the Lease so a standby takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.o.api.get(this.path(this.o.name));
      if (lease.spec?.holderIdentity === this.o.identity) {
        await this.o.api.replace(this.path(this.o.name), { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: this.micro(this.o.clock()) } }, 'Lease');
      }
    } catch (e) {
      this.o.log.warn('could not release the lease', { error: String(e) });
    }
  }
}
