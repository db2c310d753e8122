"""Every label, annotation, resource and field-manager key kubetune reads or writes, in one place.

Labels and annotations follow the Kubernetes conventions (`kubetune.io/…` prefixes, the
recommended `app.kubernetes.io/managed-by` label); GPU keys are those of the NVIDIA device plugin
and GPU feature discovery, which every major GPU cluster uses.
"""

from __future__ import annotations

# Children of a FineTuneJob (builders.names gives their names).
LABEL_JOB = "kubetune.io/finetunejob"
LABEL_RUN = "kubetune.io/run"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_COMPONENT = "kubetune.io/component"
COMPONENT_TRAIN = "train"
COMPONENT_VALIDATE = "validate-data"
COMPONENT_PRUNE = "prune-versions"
COMPONENT_CHECK_DATA = "check-data"
# On a training Job: what admission granted, read back to rebuild the GPU usage after a restart.
ANNOTATION_ADMITTED_GPUS = "kubetune.io/admitted-gpus"
ANNOTATION_GPU_TYPE = "kubetune.io/gpu-type"
ANNOTATION_RESUME_FROM = "kubetune.io/resume-from"
# On an admitted training Job: its queue priority (preemption compares it), and on a preempted one why.
ANNOTATION_PRIORITY = "kubetune.io/priority"
ANNOTATION_PREEMPTED = "kubetune.io/preempted"
# On a FineTuneJob: `kubectl annotate ftj <job> kubetune.io/retrain=<value>` starts one run per value.
ANNOTATION_RETRAIN = "kubetune.io/retrain"

# Children of a ModelDeployment.
LABEL_MODELDEPLOYMENT = "kubetune.io/modeldeployment"
LABEL_TRACK = "kubetune.io/track"
LABEL_MODEL_VERSION = "kubetune.io/model-version"
# On a server Deployment: the model it serves (with what was pinned at its rollout) and the
# ModelDeployment generation it was resolved for (promotion policy manual).
ANNOTATION_SERVED_MODEL = "kubetune.io/served-model"
ANNOTATION_RESOLVED_GENERATION = "kubetune.io/resolved-generation"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetune"
# Server-side apply field manager of every object the operator writes.
FIELD_MANAGER = "kubetune-operator"

# Kueue (admission.backend: kueue): the API kubetune writes, the objects it owns and the labels Kueue's
# batch/Job integration reads (sigs.k8s.io/kueue pkg/controller/constants).
KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta2"
KUEUE_COHORT = "kubetune"
KUEUE_LOCAL_QUEUE = "kubetune"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
FIELD_MANAGER_KUEUE = "kubetune-kueue"
# On a Kueue object: the GPUQuota it was compiled from.
LABEL_GPUQUOTA = "kubetune.io/gpuquota"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The metric a prometheus-adapter rule exposes per server pod (docs/serving.md, Autoscaling).
CONCURRENCY_METRIC = "kubetune_requests_in_flight"
