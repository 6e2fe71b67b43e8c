/**
 * The primary repository: a KMS key (wraps the repository key, encrypts the bucket), the
 * bucket (SSE-KMS with a bucket key, versioned, TLS-only, no public access, optional
 * Object Lock with a default retention, incomplete uploads aborted, old versions expired)
 * and a bucket for its server access logs.
 */
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { acknowledge } from './nag.ts';
import { Construct } from 'constructs';
import type { RepositoryConfig } from '../../core/config.ts';

export interface RepositoryStorageProps {
  repository: RepositoryConfig;
  /** Days a version stays after it is overwritten or deleted (GC, prune) before S3 expires it. */
  noncurrentVersionDays?: number;
}

export class RepositoryStorage extends Construct {
  readonly key: kms.Key;
  readonly bucket: s3.Bucket;
  readonly accessLogs: s3.Bucket;

  constructor(scope: Construct, id: string, props: RepositoryStorageProps) {
    super(scope, id);
    // Log delivery permission by bucket policy, not by ACL, so both buckets can keep ACLs disabled.
    this.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);
    const lock = props.repository.objectLock;

    this.key = new kms.Key(this, 'Key', {
      description: `Lifeboat repository '${props.repository.id}': wraps the repository key and encrypts its objects`,
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.RETAIN, // without it the repository cannot be read again
    });

    this.accessLogs = new s3.Bucket(this, 'AccessLogs', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      encryption: s3.BucketEncryption.S3_MANAGED, // S3 server access logging cannot deliver to SSE-KMS buckets
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      removalPolicy: RemovalPolicy.RETAIN,
      lifecycleRules: [{ expiration: Duration.days(365) }],
    });
    acknowledge(this.accessLogs, 'This is the server access log bucket of the repository; logging its own access would recurse.', 'AwsSolutions-S1');

    this.bucket = new s3.Bucket(this, 'Bucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: this.key,
      bucketKeyEnabled: true, // one KMS call per bucket key, not per chunk
      versioned: true,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      removalPolicy: RemovalPolicy.RETAIN,
      serverAccessLogsBucket: this.accessLogs,
      serverAccessLogsPrefix: 'repository/',
      ...(lock
        ? {
            objectLockEnabled: true,
            objectLockDefaultRetention:
              lock.mode === 'COMPLIANCE'
                ? s3.ObjectLockRetention.compliance(Duration.days(lock.days))
                : s3.ObjectLockRetention.governance(Duration.days(lock.days)),
          }
        : {}),
      lifecycleRules: [
        { id: 'AbortIncompleteUploads', abortIncompleteMultipartUploadAfter: Duration.days(7) },
        // Movers' transfer progress (contracts/progress.ts) is for watching a run, not for keeping.
        { id: 'ExpireProgress', prefix: 'progress/', expiration: Duration.days(1) },
        // Garbage collection and pruning delete current versions; the old ones go after a grace period
        // (never before an Object Lock retention ends: S3 does not expire locked versions).
        { id: 'ExpireOldVersions', noncurrentVersionExpiration: Duration.days(props.noncurrentVersionDays ?? 30), expiredObjectDeleteMarker: true },
      ],
    });
  }
}
