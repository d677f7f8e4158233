// Command svcproxy stands in for kube-proxy in the test control plane, for the API server's
// own connections only. kube-apiserver sends its "cluster" egress (admission webhooks called
// through a Service) to this HTTP CONNECT proxy (an EgressSelectorConfiguration written by
// up.sh). A test that runs a Service's backend on loopback adds a route "CLUSTER_IP:PORT
// 127.0.0.1:PORT" to the routes file; the proxy then tunnels the API server's connection there.
// A loopback target passes unchanged (webhooks registered by URL); anything else is refused:
// this proxy never dials beyond loopback.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:16444", "address to listen on (loopback)")
	routes := flag.String("routes", "service-routes", "file of 'FROM_HOST:PORT TO_HOST:PORT…' lines, re-read on every connection")
	cert := flag.String("cert", "svcproxy.crt", "serving certificate (the API server's egress only speaks TLS)")
	key := flag.String("key", "svcproxy.key", "serving key")
	clientCA := flag.String("client-ca", "ca.crt", "CA of the client certificate the API server presents")
	flag.Parse()
	pem, err := os.ReadFile(*clientCA)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	srv := &http.Server{
		Addr:              *listen,
		ReadHeaderTimeout: 10 * time.Second,
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tunnel(w, r, *routes) }),
		TLSConfig:         &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
		// HTTP/1.1 only: CONNECT tunnels hijack the connection.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	log.Printf("svcproxy listening on %s, routes from %s", *listen, *routes)
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}

// routes returns where a CONNECT target may go, in order of preference: the backends the
// routes file lists for it (like a Service's ready endpoints), or the target itself when it
// is on loopback; nothing else.
func routes(target, file string) []string {
	if f, err := os.Open(file); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 && fields[0] == target {
				var out []string
				for _, to := range fields[1:] {
					if isLoopback(to) {
						out = append(out, to)
					}
				}
				return out
			}
		}
	}
	if isLoopback(target) {
		return []string{target}
	}
	return nil
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return (ip != nil && ip.IsLoopback()) || host == "localhost"
}

func tunnel(w http.ResponseWriter, r *http.Request, file string) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	backends := routes(r.Host, file)
	if len(backends) == 0 {
		log.Printf("refused %s: no route (only loopback targets are dialled)", r.Host)
		http.Error(w, "no route to "+r.Host, http.StatusBadGateway)
		return
	}
	// A backend that refuses the connection is skipped, as an unready endpoint would be.
	var upstream net.Conn
	var err error
	for _, to := range backends {
		if upstream, err = net.DialTimeout("tcp", to, 5*time.Second); err == nil {
			break
		}
		log.Printf("%s -> %s: %v", r.Host, to, err)
	}
	if upstream == nil {
		http.Error(w, "no backend of "+r.Host+" answers", http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		upstream.Close()
		http.Error(w, "cannot hijack", http.StatusInternalServerError)
		return
	}
	client, buf, err := hj.Hijack()
	if err != nil {
		upstream.Close()
		return
	}
	if _, err := client.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		client.Close()
		upstream.Close()
		return
	}
	// Either side closing ends the tunnel, so a backend that dies is seen by the API server at
	// once (as a reset from a dead pod would be), not on the next request over a pooled connection.
	done := make(chan struct{}, 2)
	go func() { io.Copy(upstream, buf); done <- struct{}{} }()
	go func() { io.Copy(client, upstream); done <- struct{}{} }()
	<-done
	client.Close()
	upstream.Close()
	<-done
}
