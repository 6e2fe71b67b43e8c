/** Whether an SDK call a function made is allowed by its access declaration (cdk/lib/function-access.ts), as IAM would decide it. */
import type { FunctionAccess } from '../../cdk/lib/function-access.ts';
import type { SdkCall } from '../../functions/commons/clients.ts';

/** The IAM action an SDK operation needs (HEAD and GET are both s3:GetObject). */
export const iamAction: Record<string, string> = {
  'dynamodb:GetItem': 'GetItem',
  'dynamodb:PutItem': 'PutItem',
  'dynamodb:UpdateItem': 'UpdateItem',
  'dynamodb:DeleteItem': 'DeleteItem',
  'dynamodb:Query': 'Query',
  'dynamodb:Scan': 'Scan',
  'dynamodb:BatchGetItem': 'BatchGetItem',
  'dynamodb:BatchWriteItem': 'BatchWriteItem',
  's3:GetObject': 'read',
  's3:HeadObject': 'read',
  's3:PutObject': 'write',
  's3:DeleteObject': 'delete',
  's3:DeleteObjects': 'delete',
  's3:ListObjectsV2': 'list',
  's3:GetObjectLockConfiguration': 'lockConfiguration',
  's3:PutObjectRetention': 'extend',
};

/** Why `call` is not allowed by `access`, or undefined when it is. */
export function denied(call: SdkCall, access: FunctionAccess | undefined): string | undefined {
  const need = iamAction[`${call.service}:${call.operation}`];
  if (!need) return `${call.service}:${call.operation} is not mapped to an IAM action in this test`;
  if (call.service === 'dynamodb') return access?.catalog?.includes(need as never) ? undefined : `dynamodb:${need} is not in its catalog access`;
  if (need === 'list') return access?.repository?.list ? undefined : 's3:ListBucket is not granted';
  if (need === 'lockConfiguration') return access?.repository?.retention?.read?.length ? undefined : 's3:GetBucketObjectLockConfiguration is not granted';
  const keys =
    call.operation === 'DeleteObjects'
      ? ((call.input.Delete as { Objects?: { Key: string }[] } | undefined)?.Objects ?? []).map((o) => o.Key)
      : [String(call.input.Key)];
  const prefixes: string[] =
    (need === 'read'
      ? access?.repository?.read
      : need === 'write'
        ? access?.repository?.write
        : need === 'extend'
          ? access?.repository?.retention?.extend
          : access?.repository?.delete) ?? [];
  const outside = keys.filter((k) => !prefixes.some((p) => k.startsWith(p)));
  if (outside.length) return `s3 ${need} of ${outside.join(', ')} is outside its ${need} prefixes [${prefixes.join(', ')}]`;
  // S3 answers a HEAD of a missing key with 403 instead of 404 unless ListBucket is granted.
  if (call.operation === 'HeadObject' && !access?.repository?.list) return 'HeadObject without s3:ListBucket turns a missing object into AccessDenied';
  return undefined;
}
