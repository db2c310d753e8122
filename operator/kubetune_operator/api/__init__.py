"""kubetune.io/v1alpha1: FineTuneJob, ModelDeployment and GPUQuota as pydantic models.

These models are the single source of the API: `kubetune crds` generates crds/*.yaml from them,
the operator parses bodies with them, and they work as a small SDK (`FineTuneJob(...).to_yaml()`).
"""

from kubetune_operator.api import finetunejob, gpuquota, modeldeployment
from kubetune_operator.api.common import API_VERSION, CATEGORY, GROUP, VERSION, CelRule, ModelRef, PodSettings
from kubetune_operator.api.conditions import Condition, find_condition
from kubetune_operator.api.finetunejob import (
    CurrentRun,
    DataQualityReport,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    ModelVersion,
    Progress,
    RunRecord,
)
from kubetune_operator.api.gpuquota import GPUQuota, GPUQuotaSpec, GPUQuotaStatus, PendingJob
from kubetune_operator.api.modeldeployment import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Rollout,
)

FINETUNEJOB_PLURAL = finetunejob.PLURAL
MODELDEPLOYMENT_PLURAL = modeldeployment.PLURAL
GPUQUOTA_PLURAL = gpuquota.PLURAL

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "FINETUNEJOB_PLURAL",
    "GPUQUOTA_PLURAL",
    "GROUP",
    "MODELDEPLOYMENT_PLURAL",
    "VERSION",
    "CelRule",
    "Condition",
    "CurrentRun",
    "DataQualityReport",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "GPUQuota",
    "GPUQuotaSpec",
    "GPUQuotaStatus",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelRef",
    "ModelVersion",
    "PendingJob",
    "PodSettings",
    "Progress",
    "Rollout",
    "RunRecord",
    "find_condition",
]
