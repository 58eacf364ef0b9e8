import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, vi } from 'vitest';
import { CheckpointSource } from './session.js';

const gcm = join(fileURLToPath(new URL('../../test/fixtures/mindspore/cases/encrypted-aes-gcm', import.meta.url)));

describe('CheckpointSource.indexesOf', () => {
  it('reports the lowest failing rank, whichever file fails first', async () => {
    const source = await CheckpointSource.open({ checkpoint: join(gcm, 'ckpt'), strategy: join(gcm, 'strategy.ckpt') });
    try {
      // Both files are encrypted and no key is given: both fail. Rank 0's failure is held back so
      // that rank 1's arrives first.
      const index = source.index.bind(source);
      vi.spyOn(source, 'index').mockImplementation((rank) => {
        const p = index(rank)!;
        return rank === 0 ? p.catch(async (e) => { await new Promise((r) => setTimeout(r, 50)); throw e; }) : p;
      });
      await expect(source.indexesOf([1, 0])).rejects.toThrow(
        `${join(gcm, 'ckpt', 'rank_0', 'net-1_1.ckpt')}: checkpoint is encrypted (AES-GCM); a decryption key is required`,
      );
    } finally {
      await source.close();
    }
  });
});
