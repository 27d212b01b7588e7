// cert-manager's controller, with only the controllers the local cluster's CA
// ClusterIssuer needs (the list is written next to this file by
// hack/build-components.sh). Each controller registers itself in its package's
// init(); this starts those named, as cert-manager's own main does, without
// leader election (the local cluster runs one).
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cert-manager/cert-manager/pkg/controller"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	resources := flag.String("cluster-resource-namespace", "cert-manager", "namespace of the ClusterIssuers' Secrets")
	flag.Parse()
	logf.InitLogs()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	log := logf.FromContext(ctx)
	fail := func(err error, msg string, kv ...any) {
		log.Error(err, msg, kv...)
		os.Exit(1)
	}

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: *resources},
		CertificateOptions: controller.CertificateOptions{
			// A Certificate's Secret goes with it (an app's, when the app goes).
			EnableOwnerRef:                           true,
			CertificateRequestMinimumBackoffDuration: time.Second,
			CertificateRequestMaximumBackoffDuration: 30 * time.Second,
		},
	})
	if err != nil {
		fail(err, "building the controller context")
	}
	shared, err := factory.Build()
	if err != nil {
		fail(err, "building the controller context")
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, name := range controllers {
		construct, ok := controller.Known()[name]
		if !ok {
			fail(nil, "no such controller", "controller", name)
		}
		c, err := construct(factory)
		if err != nil {
			fail(err, "starting a controller", "controller", name)
		}
		g.Go(func() error { return c.Run(2, ctx) })
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	if err := g.Wait(); err != nil {
		fail(err, "a controller stopped")
	}
}
