/**
 * cdk-nag (v3) findings acknowledged with CDK's Validations API. Each acknowledgment names
 * the exact finding (`AwsSolutions-IAM5[Resource::...]`) and carries the written reason.
 */
import { Stack, Validations, type CfnElement } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/** Acknowledges `findings` on `scope` (and everything under it) for `reason`. */
export function acknowledge(scope: IConstruct, reason: string, ...findings: string[]): void {
  if (!reason.trim()) throw new Error(`acknowledging ${findings.join(', ')} on ${scope.node.path} needs a written reason`);
  Validations.of(scope).acknowledge(...findings.map((id) => ({ id, reason })));
}

/**
 * The AwsSolutions-IAM5 finding id of a wildcard resource `<Arn of construct>` + `suffix`,
 * e.g. `AwsSolutions-IAM5[Resource::<RepositoryBucketABC123.Arn>/chunks/*]`.
 */
export function arnWildcardFinding(resource: IConstruct, suffix: string): string {
  const cfn = (resource.node.defaultChild ?? resource) as CfnElement;
  return `AwsSolutions-IAM5[Resource::<${Stack.of(resource).getLogicalId(cfn)}.Arn>${suffix}]`;
}
