{{/*
Names and labels shared by every template (KubeRay's and vLLM production-stack's conventions:
app.kubernetes.io/* labels, nameOverride / fullnameOverride, names cut at 63 characters).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "hetagent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else <release>-<name>, else the release name when it
already contains the name.
*/}}
{{- define "hetagent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label: name-version. */}}
{{- define "hetagent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "hetagent.labels" -}}
helm.sh/chart: {{ include "hetagent.chart" . }}
{{ include "hetagent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hetagent
{{- end }}

{{/* Selector labels (stable across upgrades: never add the version here). */}}
{{- define "hetagent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hetagent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of the control plane's pods. */}}
{{- define "hetagent.controlPlaneSelectorLabels" -}}
{{ include "hetagent.selectorLabels" . }}
app.kubernetes.io/component: control-plane
{{- end }}

{{/* The ServiceAccount the daemon runs as. */}}
{{- define "hetagent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hetagent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The control-plane image, the tag defaulting to the chart's appVersion. */}}
{{- define "hetagent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* A Ray image by kind (cpu, nvidia, amd, gaudi): (dict "root" $ "kind" "cpu"). */}}
{{- define "hetagent.rayImage" -}}
{{- $img := index .root.Values.rayCluster.images .kind }}
{{- printf "%s:%s" $img.repository ($img.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}

{{/* Name of the RayCluster; KubeRay names its head Service <this>-head-svc. */}}
{{- define "hetagent.rayClusterName" -}}
{{- printf "%s-ray" (include "hetagent.fullname" .) | trunc 55 | trimSuffix "-" }}
{{- end }}

{{/* The Ray address the daemon connects to (Ray client on the head Service, port 10001). */}}
{{- define "hetagent.rayAddress" -}}
{{- if .Values.rayCluster.enabled }}
{{- printf "ray://%s-head-svc.%s.svc:10001" (include "hetagent.rayClusterName" .) .Release.Namespace }}
{{- else }}
{{- .Values.rayCluster.rayAddress }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the database URL, empty when SQLite is used. */}}
{{- define "hetagent.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.database.url }}
{{- printf "%s-database" (include "hetagent.fullname" .) }}
{{- end }}
{{- end }}
{{- define "hetagent.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{/* The daemon's data dir; models/ and indexes/ under it are what the Ray workers must see too. */}}
{{- define "hetagent.dataDir" -}}/var/lib/hetagent{{- end }}

{{/* Mounts of sharedStorage (models and indexes at the same paths in every pod), with a leading newline. */}}
{{- define "hetagent.sharedMounts" -}}
{{- if .Values.sharedStorage.existingClaim }}
- name: shared
  mountPath: {{ include "hetagent.dataDir" . }}/models
  subPath: models
  readOnly: true
- name: shared
  mountPath: {{ include "hetagent.dataDir" . }}/indexes
  subPath: indexes
  readOnly: true
{{- end }}
{{- end }}
{{- define "hetagent.sharedVolume" -}}
{{- if .Values.sharedStorage.existingClaim }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ .Values.sharedStorage.existingClaim }}
    readOnly: true
{{- end }}
{{- end }}

{{/* Where the daemon reads the catalogs and the inventory (the ConfigMap's mount). */}}
{{- define "hetagent.configsDir" -}}/etc/hetagent/configs{{- end }}

{{/*
Checks that span several values (the schema checks each value alone): fails the render with a readable message.
*/}}
{{- define "hetagent.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "hetagent.databaseSecretName" .)) }}
{{- fail (printf "replicas is %d but no database is set: several daemon replicas need a shared PostgreSQL (database.url or database.existingSecret); SQLite lives in one pod's data dir" (int .Values.replicas)) }}
{{- end }}
{{- if and (not .Values.rayCluster.enabled) (not .Values.rayCluster.rayAddress) }}
{{- fail "rayCluster.enabled is false and rayCluster.rayAddress is empty: the daemon needs a Ray cluster to run graphs on" }}
{{- end }}
{{- if and (not .Values.catalog.hardware) .Values.catalog.models }}
{{- fail "catalog.models is set but catalog.hardware is empty: give both (hetagent deploy values does) or neither (the image's catalog)" }}
{{- end }}
{{- if and .Values.catalog.hardware (not .Values.catalog.models) }}
{{- fail "catalog.hardware is set but catalog.models is empty: give both (hetagent deploy values does) or neither (the image's catalog)" }}
{{- end }}
{{- if .Values.rayCluster.enabled }}
{{- $inv := list }}
{{- range .Values.cluster.inventory.devices }}{{- $inv = append $inv .type }}{{- end }}
{{- $groups := list }}
{{- range .Values.rayCluster.workerGroups }}
{{- if has .deviceType $groups }}
{{- fail (printf "rayCluster.workerGroups lists device type %q twice: one worker group per tier" .deviceType) }}
{{- end }}
{{- $groups = append $groups .deviceType }}
{{- if not (has .deviceType $inv) }}
{{- fail (printf "rayCluster.workerGroups has device type %q that cluster.inventory.devices does not list (%s); regenerate with `hetagent deploy values`" .deviceType (join ", " $inv)) }}
{{- end }}
{{- if lt (int .maxReplicas) (int .minReplicas) }}
{{- fail (printf "rayCluster.workerGroups[%s]: maxReplicas %d is below minReplicas %d" .deviceType (int .maxReplicas) (int .minReplicas)) }}
{{- end }}
{{- if or (lt (int .replicas) (int .minReplicas)) (gt (int .replicas) (int .maxReplicas)) }}
{{- fail (printf "rayCluster.workerGroups[%s]: replicas %d is outside [minReplicas %d, maxReplicas %d]" .deviceType (int .replicas) (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- end }}
{{- range $inv }}
{{- if not (has . $groups) }}
{{- fail (printf "cluster.inventory.devices has device type %q without a worker group in rayCluster.workerGroups; regenerate with `hetagent deploy values`" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
