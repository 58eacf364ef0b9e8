// The ONE source of the DistributedInference API: the CRD in crds/ (and its copy in the chart), the
// TypeScript types in types.ts and the CLI/operator validation (validate.ts) are all generated from
// or driven by this file (`npx tsx operator/api/generate.ts`; operator/api/drift.test.ts fails when
// they disagree). Every cross-field rule is written once here: the CEL the API server enforces at
// admission, the same message, and the JS mirror the CLI runs before anything reaches a cluster.

export const GROUP = 'inference.shardserve.io';
export const VERSION = 'v1alpha1';
export const KIND = 'DistributedInference';
export const PLURAL = 'distributedinferences';
export const SINGULAR = 'distributedinference';
export const SHORT_NAMES = ['dinf'];
export const CATEGORIES = ['shardserve', 'all'];
export const API_VERSION = `${GROUP}/${VERSION}`;

/** Ports fixed by the rank pod contract (DESIGN §5). */
export const RANK_PORT = 7000;
export const DEFAULT_GRPC_PORT = 8001;
export const DEFAULT_HTTP_PORT = 8000;
export const DEFAULT_IMAGE = 'shardserve/runtime:0.1.0';
/** Pod names are `<name>-g<group>-<rank>` and must stay a DNS label (63) with room for the suffixes. */
export const MAX_NAME_LENGTH = 40;
export const MAX_WORLD_SIZE = 1024;

/** A cross-field rule: the CEL the API server runs, its message, and the same check in JS. */
export type Rule = {
  rule: string;
  message: string;
  /** A transition rule (uses oldSelf); checked locally only when an old object is given. */
  transition?: boolean;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  check: (self: any, oldSelf?: any) => boolean;
};

export type Schema = {
  type?: 'object' | 'string' | 'integer' | 'boolean' | 'array';
  description: string;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  additionalProperties?: Schema;
  enum?: string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  maxLength?: number;
  minLength?: number;
  maxItems?: number;
  maxProperties?: number;
  format?: string;
  rules?: Rule[];
  'x-kubernetes-preserve-unknown-fields'?: boolean;
  'x-kubernetes-int-or-string'?: boolean;
  'x-kubernetes-list-type'?: 'atomic' | 'map' | 'set';
  'x-kubernetes-list-map-keys'?: string[];
  'x-kubernetes-map-type'?: 'atomic' | 'granular';
  /** TypeScript type name for the generated types (objects only). */
  tsName?: string;
};

// Where checkpoints and graphs may live: s3://bucket/key, http(s)://host/path, file:///path or an
// absolute path inside the image. One regex, used by CEL (RE2) and JS alike.
const URI_RE = '^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\\s]*)?|https?://[^/\\s:]+(:[0-9]{1,5})?(/[^\\s]*)?|file:///[^\\s]*|/[^\\s]*)$';
const uriRe = new RegExp(URI_RE);
const DNS_LABEL_RE = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
const dnsLabelRe = new RegExp(DNS_LABEL_RE);
const DNS_SUBDOMAIN_RE = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';
const dnsSubdomainRe = new RegExp(DNS_SUBDOMAIN_RE);
const ENV_NAME_RE = '^[-._a-zA-Z][-._a-zA-Z0-9]*$';
const envNameRe = new RegExp(ENV_NAME_RE);

function uri(what: string, example: string): Schema {
  return {
    type: 'string',
    maxLength: 2048,
    description: `${what} (s3://bucket/key, http(s)://host/path, file:///path or an absolute path in the image), e.g. ${example}.`,
    rules: [
      {
        rule: `self.matches('${URI_RE.replace(/\\/g, '\\\\')}')`,
        message: `must be a URI like s3://bucket/key, https://host/path, file:///path or /absolute/path (no spaces)`,
        check: (s: string) => uriRe.test(s),
      },
    ],
  };
}

function secretName(what: string): Schema {
  return {
    type: 'string',
    maxLength: 253,
    description: `Name of a Secret in the resource's namespace ${what}.`,
    rules: [
      {
        rule: `self.matches('${DNS_SUBDOMAIN_RE.replace(/\\/g, '\\\\')}')`,
        message: 'must be a Secret name: lowercase letters, digits, - and . (DNS subdomain)',
        check: (s: string) => dnsSubdomainRe.test(s),
      },
    ],
  };
}

function port(what: string, dflt: number): Schema {
  return { type: 'integer', description: what, default: dflt, minimum: 1, maximum: 65535 };
}

const stringMap = (description: string, maxProperties = 64): Schema => ({
  type: 'object',
  description,
  maxProperties,
  additionalProperties: { type: 'string', description: 'value', maxLength: 1024 },
});

const opaque = (description: string): Schema => ({
  type: 'object',
  description,
  'x-kubernetes-preserve-unknown-fields': true,
});

const spec: Schema = {
  type: 'object',
  tsName: 'DistributedInferenceSpec',
  description: 'What to serve and how to split it across ranks.',
  required: ['model', 'checkpoint'],
  properties: {
    modelName: {
      type: 'string',
      maxLength: 63,
      description:
        'Name clients use in Open Inference Protocol requests (/v2/models/<modelName>). Defaults to the resource name. Immutable once set, because clients address the model by it.',
      rules: [
        {
          rule: `self.matches('${DNS_LABEL_RE}')`,
          message: 'must be lowercase letters, digits and - (a DNS label), e.g. llama-70b',
          check: (s: string) => dnsLabelRe.test(s),
        },
        {
          rule: 'self == oldSelf',
          message: 'is immutable: clients address the model by this name; create a new DistributedInference to rename it',
          transition: true,
          check: (s: string, old: string) => s === old,
        },
      ],
    },
    model: {
      type: 'object',
      tsName: 'ModelSpec',
      description: 'The network: an ONNX graph of the single-device model whose initializers are named like the checkpoint parameters.',
      required: ['uri'],
      properties: {
        uri: uri('ONNX graph of the single-device network', 's3://models/net.onnx'),
        parameterNames: stringMap(
          'Checkpoint parameter name -> graph initializer name, for parameters whose names differ between the checkpoint and the graph.',
          10000,
        ),
        cutTensors: {
          type: 'array',
          description:
            'Optional explicit pipeline cut: the graph tensor at each stage boundary (exactly pipelineStages - 1 entries). By default the graph is cut by the stage each parameter belongs to.',
          maxItems: 127,
          'x-kubernetes-list-type': 'atomic',
          items: { type: 'string', description: 'a graph tensor name', minLength: 1, maxLength: 512 },
        },
      },
    },
    checkpoint: {
      type: 'object',
      tsName: 'CheckpointSpec',
      description: 'The sharded checkpoint distributed training left behind (rank_<N>/ directories) and its parallel strategy.',
      required: ['uri', 'strategy'],
      properties: {
        uri: uri('Directory holding the rank_<N>/ checkpoint directories', 's3://models/ckpt/'),
        strategy: uri('Training parallel strategy: one file (.ckpt protobuf or .json), a merged pipeline file, or a directory of per-stage files', 's3://models/strategy/'),
        format: {
          type: 'string',
          description: 'Checkpoint file format; auto detects it from the file extension and magic bytes.',
          enum: ['auto', 'mindspore-ckpt', 'safetensors'],
          default: 'auto',
        },
        credentials: {
          type: 'object',
          tsName: 'CredentialsRef',
          description:
            'S3 credentials: a Secret whose keys are AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL_S3). Mounted into the rank pods by reference; never copied.',
          required: ['secretName'],
          properties: { secretName: secretName('holding the S3 credentials') },
        },
        decryption: {
          type: 'object',
          tsName: 'DecryptionRef',
          description: 'Decryption of an encrypted MindSpore .ckpt (save_checkpoint(enc_key=..., enc_mode=...)). The key stays in its Secret and is mounted by reference.',
          required: ['secretName'],
          properties: {
            secretName: secretName('holding the decryption key (16, 24 or 32 bytes, raw or in hex)'),
            key: { type: 'string', description: 'Key inside the Secret that holds the key.', default: 'key', minLength: 1, maxLength: 253 },
            mode: {
              type: 'string',
              description: 'Cipher the checkpoint was saved with (MindSpore enc_mode).',
              enum: ['AES-GCM', 'AES-CBC', 'SM4-CBC'],
              default: 'AES-GCM',
            },
          },
        },
      },
      rules: [
        {
          rule: "!has(self.decryption) || self.format != 'safetensors'",
          message: 'decryption applies to MindSpore .ckpt files only: set format to mindspore-ckpt (or auto), or remove decryption',
          check: (c) => !c.decryption || c.format !== 'safetensors',
        },
        {
          rule: 'self.format == oldSelf.format || self.uri != oldSelf.uri',
          message: 'format can only change together with uri: the files at an unchanged location keep their format',
          transition: true,
          check: (c, o) => c.format === o.format || c.uri !== o.uri,
        },
      ],
    },
    parallelism: {
      type: 'object',
      tsName: 'ParallelismSpec',
      description: 'The inference layout of one replica group: worldSize = pipelineStages x tensorParallel ranks.',
      default: { pipelineStages: 1, tensorParallel: 1 },
      properties: {
        pipelineStages: {
          type: 'integer',
          description: 'Pipeline stages; must equal the training strategy\'s stage count when greater than 1.',
          default: 1,
          rules: [{ rule: 'self >= 1 && self <= 128', message: 'must be between 1 and 128 (1 = no pipeline)', check: (n: number) => n >= 1 && n <= 128 }],
        },
        tensorParallel: {
          type: 'integer',
          description: 'Ranks per stage that split each layer (tensor parallelism).',
          default: 1,
          rules: [{ rule: 'self >= 1 && self <= 64', message: 'must be between 1 and 64 (1 = no tensor parallelism)', check: (n: number) => n >= 1 && n <= 64 }],
        },
        worldSize: {
          type: 'integer',
          description: 'Optional cross-check: ranks per replica group. When set it must equal pipelineStages x tensorParallel.',
          minimum: 1,
        },
      },
      rules: [
        {
          rule: '!has(self.worldSize) || self.worldSize == self.pipelineStages * self.tensorParallel',
          message: 'worldSize must equal pipelineStages x tensorParallel; fix one of the three or drop worldSize',
          check: (p) => p.worldSize === undefined || p.worldSize === p.pipelineStages * p.tensorParallel,
        },
        {
          rule: `self.pipelineStages * self.tensorParallel <= ${MAX_WORLD_SIZE}`,
          message: `pipelineStages x tensorParallel must be at most ${MAX_WORLD_SIZE} ranks per group`,
          check: (p) => p.pipelineStages * p.tensorParallel <= MAX_WORLD_SIZE,
        },
      ],
    },
    replicas: {
      type: 'integer',
      description: 'Independent pipeline groups serving the same model (data parallelism). Each group has worldSize ranks; scaling adds or removes whole groups (scale subresource, so an HorizontalPodAutoscaler can drive it).',
      default: 1,
      rules: [{ rule: 'self >= 0 && self <= 256', message: 'must be between 0 and 256 groups', check: (n: number) => n >= 0 && n <= 256 }],
    },
    runtime: {
      type: 'object',
      tsName: 'RuntimeSpec',
      description: 'How the rank pods run: image, resources and scheduling.',
      default: {},
      properties: {
        image: { type: 'string', description: 'Rank container image (runs `shardserve rank`).', default: DEFAULT_IMAGE, minLength: 1, maxLength: 512 },
        imagePullPolicy: { type: 'string', description: 'When to pull the image.', enum: ['Always', 'IfNotPresent', 'Never'], default: 'IfNotPresent' },
        imagePullSecrets: {
          type: 'array',
          description: 'Names of Secrets to pull the image with.',
          maxItems: 16,
          'x-kubernetes-list-type': 'atomic',
          items: { type: 'string', description: 'a Secret name', minLength: 1, maxLength: 253 },
        },
        resources: opaque('Container resources (requests, limits) of every rank, as in a Pod spec, e.g. {limits: {cpu: "4", memory: 32Gi}}.'),
        nodeSelector: stringMap('Node labels the rank pods must run on.'),
        tolerations: {
          type: 'array',
          description: 'Tolerations of the rank pods, as in a Pod spec.',
          maxItems: 64,
          'x-kubernetes-list-type': 'atomic',
          items: opaque('a toleration'),
        },
        affinity: opaque('Affinity of the rank pods, as in a Pod spec.'),
        env: {
          type: 'array',
          description: 'Extra environment variables for every rank (names starting with SHARDSERVE_ are reserved for the operator).',
          maxItems: 64,
          'x-kubernetes-list-type': 'map',
          'x-kubernetes-list-map-keys': ['name'],
          items: {
            type: 'object',
            tsName: 'EnvVar',
            description: 'an environment variable',
            required: ['name'],
            properties: {
              name: {
                type: 'string',
                description: 'variable name',
                maxLength: 256,
                rules: [{ rule: `self.matches('${ENV_NAME_RE}')`, message: 'must be a C identifier-like environment variable name', check: (s: string) => envNameRe.test(s) }],
              },
              value: { type: 'string', description: 'variable value', maxLength: 32768 },
            },
          },
          rules: [
            {
              rule: "self.all(e, !e.name.startsWith('SHARDSERVE_'))",
              message: 'names starting with SHARDSERVE_ are set by the operator (DESIGN §5); rename the variable',
              check: (env: { name: string }[]) => env.every((e) => !e.name.startsWith('SHARDSERVE_')),
            },
          ],
        },
        serviceAccountName: { type: 'string', description: 'ServiceAccount the rank pods run as (e.g. one bound to cloud storage credentials).', maxLength: 253 },
        priorityClassName: { type: 'string', description: 'PriorityClass of the rank pods.', maxLength: 253 },
        podLabels: stringMap('Extra labels on every rank pod.'),
        podAnnotations: stringMap('Extra annotations on every rank pod.'),
        loadTimeoutSeconds: {
          type: 'integer',
          description: 'How long a rank may take to load its slice and become ready before it is restarted (startup probe budget).',
          default: 1800,
          rules: [{ rule: 'self >= 30 && self <= 86400', message: 'must be between 30 and 86400 seconds', check: (n: number) => n >= 30 && n <= 86400 }],
        },
      },
    },
    serving: {
      type: 'object',
      tsName: 'ServingSpec',
      description: 'The front door: the Open Inference Protocol endpoint (gRPC and REST) and the client Service in front of it.',
      default: { grpcPort: DEFAULT_GRPC_PORT, httpPort: DEFAULT_HTTP_PORT, serviceType: 'ClusterIP' },
      properties: {
        grpcPort: port('Front-door gRPC port (Open Inference Protocol).', DEFAULT_GRPC_PORT),
        httpPort: port('Front-door HTTP port (OIP REST, /healthz, /readyz, /metrics).', DEFAULT_HTTP_PORT),
        serviceType: { type: 'string', description: 'Type of the client Service.', enum: ['ClusterIP', 'NodePort', 'LoadBalancer'], default: 'ClusterIP' },
      },
      rules: [
        {
          rule: 'self.grpcPort != self.httpPort',
          message: 'grpcPort and httpPort must differ',
          check: (s) => s.grpcPort !== s.httpPort,
        },
        {
          rule: `self.grpcPort != ${RANK_PORT} && self.httpPort != ${RANK_PORT}`,
          message: `port ${RANK_PORT} is the rank-to-rank port; choose other grpcPort/httpPort values`,
          check: (s) => s.grpcPort !== RANK_PORT && s.httpPort !== RANK_PORT,
        },
      ],
    },
  },
  rules: [
    {
      rule: '!has(self.model.cutTensors) || size(self.model.cutTensors) == self.parallelism.pipelineStages - 1',
      message: 'model.cutTensors must list exactly parallelism.pipelineStages - 1 tensors (one per stage boundary)',
      check: (s) => !s.model?.cutTensors || s.model.cutTensors.length === s.parallelism.pipelineStages - 1,
    },
  ],
};

const condition: Schema = {
  type: 'object',
  tsName: 'Condition',
  description: 'A metav1.Condition.',
  required: ['type', 'status', 'lastTransitionTime', 'reason', 'message'],
  properties: {
    type: { type: 'string', description: 'Ready, Progressing, Degraded, Reconciling or Stalled.', maxLength: 316 },
    status: { type: 'string', description: 'True, False or Unknown.', enum: ['True', 'False', 'Unknown'] },
    observedGeneration: { type: 'integer', description: 'The .metadata.generation the condition was computed from.', minimum: 0 },
    lastTransitionTime: { type: 'string', format: 'date-time', description: 'When status last changed.' },
    reason: { type: 'string', description: 'CamelCase reason.', maxLength: 1024 },
    message: { type: 'string', description: 'What is going on and what to do about it.', maxLength: 32768 },
  },
};

const status: Schema = {
  type: 'object',
  tsName: 'DistributedInferenceStatus',
  description: 'What the operator observed.',
  properties: {
    observedGeneration: { type: 'integer', description: 'The .metadata.generation this status describes.' },
    revision: { type: 'string', description: 'Hash of the rank pod template and configuration of the current spec; every ready group runs it.' },
    replicas: { type: 'integer', description: 'Replica groups that exist.' },
    readyReplicas: { type: 'integer', description: 'Replica groups serving: every rank ready at the current revision.' },
    ranks: { type: 'integer', description: 'Rank pods wanted (replicas x worldSize).' },
    readyRanks: { type: 'integer', description: 'Rank pods ready at the current revision.' },
    selector: { type: 'string', description: 'Label selector of the rank pods (for the scale subresource).' },
    layout: {
      type: 'object',
      tsName: 'LayoutStatus',
      description: 'The inference layout in effect.',
      properties: {
        pipelineStages: { type: 'integer', description: 'Pipeline stages.' },
        tensorParallel: { type: 'integer', description: 'Ranks per stage.' },
        worldSize: { type: 'integer', description: 'Ranks per group.' },
      },
    },
    stages: {
      type: 'array',
      description: 'Per pipeline stage, over all groups: ranks, ready ranks and weight-loading progress.',
      'x-kubernetes-list-type': 'atomic',
      items: {
        type: 'object',
        tsName: 'StageStatus',
        description: 'One pipeline stage.',
        required: ['stage', 'ranks', 'readyRanks'],
        properties: {
          stage: { type: 'integer', description: 'Stage index.' },
          ranks: { type: 'integer', description: 'Rank pods of this stage (all groups).' },
          readyRanks: { type: 'integer', description: 'Ready rank pods of this stage at the current revision.' },
          loadedBytes: { type: 'integer', description: 'Weight bytes of this stage loaded so far: the sum over its ranks of what each loading rank reports on /metrics of its HTTP port (shardserve_load_bytes_done; a Ready rank counts its whole slice). Ranks the operator cannot reach add nothing; 0 until a rank reports.' },
          totalBytes: { type: 'integer', description: 'Weight bytes this stage has to load: the sum over its ranks of shardserve_load_bytes_total from /metrics of their HTTP port. Ranks the operator cannot reach add nothing; 0 until a rank reports.' },
        },
      },
    },
    endpoint: { type: 'string', description: 'The front-door address clients use (the client Service), e.g. http://name.namespace.svc:8000.' },
    conditions: {
      type: 'array',
      description: 'Ready, Progressing, Degraded, Reconciling and Stalled (kstatus conventions).',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
      items: condition,
    },
  },
};

export const resourceSchema: Schema = {
  type: 'object',
  tsName: 'DistributedInference',
  description:
    'DistributedInference serves one model too big for one device straight from the sharded checkpoint distributed training left behind: each rank loads only its slice, ranks form pipeline groups, and a front door speaks the Open Inference Protocol.',
  properties: {
    apiVersion: { type: 'string', description: 'inference.shardserve.io/v1alpha1' },
    kind: { type: 'string', description: 'DistributedInference' },
    metadata: { type: 'object', description: 'Standard object metadata.' },
    spec,
    status,
  },
  required: ['spec'],
  rules: [
    {
      rule: `size(self.metadata.name) <= ${MAX_NAME_LENGTH}`,
      message: `metadata.name must be at most ${MAX_NAME_LENGTH} characters: rank pod names add -g<group>-<rank> and must stay a DNS label`,
      check: (o) => String(o.metadata?.name ?? '').length <= MAX_NAME_LENGTH,
    },
  ],
};

export const printerColumns = [
  { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status', description: 'Every group serving at the current revision' },
  { name: 'Ready Ranks', type: 'integer', jsonPath: '.status.readyRanks', description: 'Rank pods ready at the current revision' },
  { name: 'Ranks', type: 'integer', jsonPath: '.status.ranks', description: 'Rank pods wanted' },
  { name: 'Stages', type: 'integer', jsonPath: '.spec.parallelism.pipelineStages', description: 'Pipeline stages' },
  { name: 'Replicas', type: 'integer', jsonPath: '.spec.replicas', description: 'Replica groups', priority: 1 },
  { name: 'Endpoint', type: 'string', jsonPath: '.status.endpoint', description: 'Front-door address' },
  { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
];
