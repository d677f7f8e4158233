//go:build tools

// Package tools pins the Kubernetes commands this module builds, so `go mod tidy` keeps them: the
// control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and the node
// (kube-scheduler, kubelet, kube-proxy), all from the same k8s.io/kubernetes release.
package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
