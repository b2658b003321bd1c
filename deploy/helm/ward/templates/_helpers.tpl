{{/* Labels every object of the chart carries. */}}
{{- define "ward.labels" -}}
app.kubernetes.io/name: ward
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of a component (control, proxy). */}}
{{- define "ward.selector" -}}
app.kubernetes.io/name: ward
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{/* An image reference: registry prefix, name, tag (default: the appVersion). */}}
{{- define "ward.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $tag := $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- if $root.Values.image.registry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $name $tag }}
{{- else -}}
{{ printf "%s:%s" $name $tag }}
{{- end -}}
{{- end -}}

{{/* The namespace whose policies apply mesh-wide. */}}
{{- define "ward.rootNamespace" -}}
{{- .Values.rootNamespace | default .Release.Namespace -}}
{{- end -}}

{{/* Seconds of a duration written as Ns, Nm or Nh (for the proxy's grace period). */}}
{{- define "ward.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "h" $d -}}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else -}}{{ fail (printf "proxy.drainTimeout %q: write it as Ns, Nm or Nh" $d) }}
{{- end -}}
{{- end -}}

{{/* The restricted security context of a container (Pod Security Standards "restricted"). */}}
{{- define "ward.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
