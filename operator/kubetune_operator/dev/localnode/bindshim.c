/* LD_PRELOAD for pod processes of the kubetune local node: wildcard binds go to the pod's IP.
 *
 * Every pod on the local node shares the host's network namespace; its own address is a loopback
 * IP (env KUBETUNE_POD_IP, e.g. 127.10.0.7). Servers bind the wildcard address (uvicorn
 * --host 0.0.0.0, torch's TCPStore on all interfaces), so two pods would clash on one port.
 * This library intercepts bind(2):
 *   AF_INET  with INADDR_ANY   -> the pod IP
 *   AF_INET6 with in6addr_any  -> ::ffff:<pod IP>, after clearing IPV6_V6ONLY (a v4-mapped
 *                                 address cannot be bound by a v6-only socket)
 * Anything else (a specific address, AF_UNIX, ...) is passed through unchanged. Statically linked
 * programs (Go binaries) are not affected.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    const char *ip = getenv("KUBETUNE_POD_IP");
    struct in_addr pod;
    if (addr == NULL || ip == NULL || inet_pton(AF_INET, ip, &pod) != 1)
        return real_bind(fd, addr, len);
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr = pod;
            return real_bind(fd, (const struct sockaddr *)&in4, sizeof in4);
        }
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
            int off = 0;
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
            memset(&in6.sin6_addr, 0, sizeof in6.sin6_addr);
            in6.sin6_addr.s6_addr[10] = 0xff;
            in6.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&in6.sin6_addr.s6_addr[12], &pod, 4);
            return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
        }
    }
    return real_bind(fd, addr, len);
}
