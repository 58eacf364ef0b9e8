// Builds or installs, once and cached (see cache.ts), every real part the suites use, so a new
// machine needs nothing done by hand. Each step prints what it does; a failure stops the run loudly.
import { ensurePythonVenv } from './python.js';
import { ensureMinioBinary, minioVersion } from './minio.js';
import { ensureControlPlaneBinaries, K8S_VERSION } from './k8s/binaries.js';

type Step = { name: string; ensure: () => Promise<unknown> };

const steps: Step[] = [
  { name: 'python venv (MindSpore, onnx, tritonclient)', ensure: ensurePythonVenv },
  { name: `MinIO ${minioVersion()} (S3 server for the storage suites)`, ensure: ensureMinioBinary },
  { name: `Kubernetes ${K8S_VERSION} control plane + etcd + helm (operator suites)`, ensure: ensureControlPlaneBinaries },
];

for (const step of steps) {
  const t0 = Date.now();
  process.stdout.write(`test bed: ${step.name} ...\n`);
  await step.ensure();
  process.stdout.write(`test bed: ${step.name} ready (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`);
}
