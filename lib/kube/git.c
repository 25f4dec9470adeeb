/*
 * lib/kube/git.c: a k8s or argoWorkflow trigger's source.git (Argo's GitArtifact), read
 * with libgit2 on libuv's thread pool, since fetching blocks on the network.
 *
 *   kube.lua yields ("GIT", {url, file, branch | tag | ref, dir, username, password, ssh_key,
 *   insecure, remote_name, remote_url, app_id, app_installation, app_key, app_api}) -> work
 *   thread: (githubApp: an installation token from the GitHub API, used as the password of
 *   user x-access-token, as Argo's ghinstallation does) open the repository in `dir` (or make
 *   it: bare, remote "origin" = url, or the spec's remote), fetch every branch and tag of that
 *   remote, resolve the revision, read `file` from its tree (symbolic links refused, as Argo
 *   does) -> loop: resume(200, text), resume(404, why) when the revision or the file is not
 *   there, or resume(0, why) when the fetch failed
 *
 * No working tree is checked out: the file is read from the commit's tree. Git work is
 * serialised (one repository directory may serve several firings at once).
 */
#include "kube.h"

#include "buf.h"
#include "common.h"
#include "engine.h"

#include <curl/curl.h>
#include <git2.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct herald_kube_git {
  uv_work_t work;
  herald_kube_req *kr; /* NULL once the action was abandoned (engine stopped) */
  char *url, *file, *branch, *tag, *ref, *dir, *username, *password, *ssh_key;
  char *remote_name, *remote_url; /* the spec's remote (Argo's GitRemoteConfig), or NULL */
  char *app_id, *app_installation, *app_key, *app_api; /* githubApp, or NULL */
  int insecure;
  int cred_attempts;
  /* result: */
  char *text;
  size_t len;
  char err[300];
  int missing; /* the revision or the file is not there (not worth a retry) */
} git_job;

static uv_once_t init_once = UV_ONCE_INIT;
static uv_mutex_t git_mu;

static void git_init(void) {
  git_libgit2_init();
  uv_mutex_init(&git_mu);
}

static char *field(lua_State *co, int idx, const char *name) {
  lua_getfield(co, idx, name);
  const char *s = lua_tostring(co, -1);
  char *v = s && *s ? herald_xstrdup(s) : NULL;
  lua_pop(co, 1);
  return v;
}

static void job_free(git_job *j) {
  free(j->url), free(j->file), free(j->branch), free(j->tag), free(j->ref), free(j->dir);
  free(j->username), free(j->password), free(j->ssh_key), free(j->text);
  free(j->remote_name), free(j->remote_url);
  free(j->app_id), free(j->app_installation), free(j->app_key), free(j->app_api);
  free(j);
}

static void fail(git_job *j, const char *what) {
  const git_error *e = git_error_last();
  snprintf(j->err, sizeof j->err, "%s: %s", what, e && e->message ? e->message : "unknown error");
}

static int on_credentials(git_credential **out, const char *url, const char *user_from_url,
                          unsigned int allowed, void *payload) {
  git_job *j = payload;
  if (j->cred_attempts++ > 0) return GIT_EUSER; /* the server refused them: do not loop */
  if ((allowed & GIT_CREDENTIAL_SSH_MEMORY) && j->ssh_key)
    return git_credential_ssh_key_memory_new(out, user_from_url ? user_from_url : "git", NULL,
                                             j->ssh_key, NULL);
  if ((allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT) && j->username)
    return git_credential_userpass_plaintext_new(out, j->username, j->password ? j->password : "");
  return GIT_PASSTHROUGH;
}

static int on_certificate(git_cert *cert, int valid, const char *host, void *payload) {
  git_job *j = payload;
  return j->insecure ? 0 : GIT_PASSTHROUGH; /* insecureIgnoreHostKey: accept any */
}

/* The commit the spec names: ref, else tag, else branch, else the remote's default branch. */
/* The revision the spec asks for, among what was fetched from `remote` (called `name`). */
static git_object *resolve(git_job *j, git_repository *repo, git_remote *remote, const char *name) {
  char spec[512];
  git_object *obj = NULL;
  if (j->ref) {
    /* a branch ref names our copy of it; anything else (a tag, a commit id) as given */
    if (strncmp(j->ref, "refs/heads/", 11) == 0) {
      snprintf(spec, sizeof spec, "refs/remotes/%s/%s", name, j->ref + 11);
      if (git_revparse_single(&obj, repo, spec) == 0) return obj;
    }
    if (git_revparse_single(&obj, repo, j->ref) == 0) return obj;
    snprintf(j->err, sizeof j->err, "ref %s not found", j->ref);
    return NULL;
  }
  if (j->tag) {
    snprintf(spec, sizeof spec, "refs/tags/%s", j->tag);
    if (git_revparse_single(&obj, repo, spec) == 0) return obj;
    snprintf(j->err, sizeof j->err, "tag %s not found", j->tag);
    return NULL;
  }
  if (j->branch) {
    snprintf(spec, sizeof spec, "refs/remotes/%s/%s", name, j->branch);
    if (git_revparse_single(&obj, repo, spec) == 0) return obj;
    snprintf(j->err, sizeof j->err, "branch %s not found", j->branch);
    return NULL;
  }
  git_buf head = {0};
  if (git_remote_default_branch(&head, remote) != 0 || strncmp(head.ptr, "refs/heads/", 11) != 0) {
    git_buf_dispose(&head);
    fail(j, "the remote's default branch");
    return NULL;
  }
  snprintf(spec, sizeof spec, "refs/remotes/%s/%s", name, head.ptr + 11);
  if (git_revparse_single(&obj, repo, spec) == 0) {
    git_buf_dispose(&head);
    return obj;
  }
  snprintf(j->err, sizeof j->err, "default branch %.200s not found", head.ptr + 11);
  git_buf_dispose(&head);
  return NULL;
}

/* ---- githubApp: an installation token ---- */

static size_t b64url(const unsigned char *in, size_t n, char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
    out[o++] = tab[v >> 18 & 63];
    out[o++] = tab[v >> 12 & 63];
    if (i + 1 < n) out[o++] = tab[v >> 6 & 63];
    if (i + 2 < n) out[o++] = tab[v & 63];
  }
  out[o] = '\0';
  return o;
}

static size_t collect(char *p, size_t size, size_t n, void *ud) {
  herald_buf_append(ud, p, size * n);
  return size * n;
}

/* The App's JWT (RS256 over {iat: 60 s ago, for clock skew; exp: in 9 minutes; iss: app ID}),
 * exchanged at POST {api}/app/installations/{id}/access_tokens for a token that fetches as
 * user x-access-token. Returns 0, or -1 with j->err set. */
static int github_app_token(git_job *j) {
  char input[1024], seg[512];
  long long now = (long long)time(NULL);
  const char *hdr = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
  char claims[160];
  snprintf(claims, sizeof claims, "{\"iat\":%lld,\"exp\":%lld,\"iss\":\"%s\"}", now - 60, now + 540, j->app_id);
  size_t n = b64url((const unsigned char *)hdr, strlen(hdr), input);
  input[n++] = '.';
  n += b64url((const unsigned char *)claims, strlen(claims), input + n);
  BIO *bio = BIO_new_mem_buf(j->app_key, -1);
  EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  if (!pk) {
    snprintf(j->err, sizeof j->err, "githubApp.privateKey: not a PEM private key");
    j->missing = 1; /* not worth a retry */
    return -1;
  }
  unsigned char sig[1024];
  size_t siglen = sizeof sig;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
           EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, n) == 1 && siglen <= 512 * 3 / 4;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(pk);
  if (!ok) {
    snprintf(j->err, sizeof j->err, "githubApp.privateKey: cannot sign the App's JWT with it (an RSA key is needed)");
    j->missing = 1;
    return -1;
  }
  b64url(sig, siglen, seg);
  char auth[1600], url[512];
  snprintf(auth, sizeof auth, "Authorization: Bearer %s.%s", input, seg);
  snprintf(url, sizeof url, "%s/app/installations/%s/access_tokens", j->app_api, j->app_installation);
  CURL *c = curl_easy_init();
  if (!c) {
    snprintf(j->err, sizeof j->err, "githubApp: out of memory");
    return -1;
  }
  herald_buf body = {0};
  struct curl_slist *h = curl_slist_append(NULL, auth);
  h = curl_slist_append(h, "Accept: application/vnd.github+json");
  h = curl_slist_append(h, "User-Agent: herald");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  herald_buf_append(&body, "", 1); /* NUL-terminated */
  int result = -1;
  if (rc != CURLE_OK) {
    snprintf(j->err, sizeof j->err, "githubApp: %.200s: %s", url, curl_easy_strerror(rc));
  } else if (status != 201 && status != 200) {
    snprintf(j->err, sizeof j->err, "githubApp: %.200s: response status %ld", url, status);
  } else {
    /* {"token": "ghs_...", "expires_at": ...}: the token holds no quote or backslash */
    const char *t = strstr(body.data, "\"token\"");
    t = t ? strchr(t + 7, '"') : NULL;
    const char *e = t ? strchr(t + 1, '"') : NULL;
    if (!e || e == t + 1) {
      snprintf(j->err, sizeof j->err, "githubApp: %.200s: no token in the response", url);
    } else {
      free(j->username), free(j->password);
      j->username = herald_xstrdup("x-access-token");
      j->password = herald_xmalloc((size_t)(e - t));
      memcpy(j->password, t + 1, (size_t)(e - t - 1));
      j->password[e - t - 1] = '\0';
      result = 0;
    }
  }
  herald_buf_free(&body);
  return result;
}

static void read_file(git_job *j) {
  git_repository *repo = NULL;
  git_remote *remote = NULL;
  git_object *rev = NULL;
  git_commit *commit = NULL;
  git_tree *tree = NULL;
  git_tree_entry *entry = NULL;
  git_blob *blob = NULL;
  if (git_repository_open(&repo, j->dir) != 0) {
    if (git_repository_init(&repo, j->dir, 1) != 0) return fail(j, "cannot make the repository");
  }
  /* Argo clones `url`, then (with a remote) fetches every ref of the remote over its own:
   * the revision comes from the remote, so only the remote is fetched here */
  const char *name = j->remote_name ? j->remote_name : "origin";
  const char *url = j->remote_name ? j->remote_url : j->url;
  int valid = 0;
  if (git_remote_name_is_valid(&valid, name) != 0 || !valid) {
    snprintf(j->err, sizeof j->err, "not a valid git remote name: %.200s", name);
    goto out;
  }
  if (git_remote_lookup(&remote, repo, name) == 0) {
    if (strcmp(git_remote_url(remote), url) != 0) {
      git_remote_free(remote);
      remote = NULL;
      if (git_remote_set_url(repo, name, url) != 0 || git_remote_lookup(&remote, repo, name) != 0) {
        fail(j, "cannot set the remote");
        goto out;
      }
    }
  } else if (git_remote_create(&remote, repo, name, url) != 0) {
    fail(j, "cannot add the remote");
    goto out;
  }
  git_fetch_options fo;
  git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
  fo.callbacks.credentials = on_credentials;
  fo.callbacks.certificate_check = on_certificate;
  fo.callbacks.payload = j;
  /* tags forced, as Argo fetches every ref with force (a tag moved upstream moves here too) */
  fo.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
  fo.prune = GIT_FETCH_PRUNE;
  char heads[300];
  snprintf(heads, sizeof heads, "+refs/heads/*:refs/remotes/%s/*", name);
  char *refspecs[] = {heads, "+refs/tags/*:refs/tags/*"};
  git_strarray specs = {refspecs, 2};
  if (git_remote_fetch(remote, &specs, &fo, NULL) != 0) {
    fail(j, "fetch failed");
    goto out;
  }
  if (!(rev = resolve(j, repo, remote, name))) {
    j->missing = 1;
    goto out;
  }
  if (git_object_peel((git_object **)&commit, rev, GIT_OBJECT_COMMIT) != 0 || git_commit_tree(&tree, commit) != 0) {
    fail(j, "not a commit");
    goto out;
  }
  if (git_tree_entry_bypath(&entry, tree, j->file) != 0) {
    snprintf(j->err, sizeof j->err, "%s: no such file in the repository", j->file);
    j->missing = 1;
    goto out;
  }
  if (git_tree_entry_filemode(entry) == GIT_FILEMODE_LINK) {
    snprintf(j->err, sizeof j->err, "%s is a symbolic link, which is not allowed", j->file);
    j->missing = 1;
    goto out;
  }
  if (git_tree_entry_type(entry) != GIT_OBJECT_BLOB || git_blob_lookup(&blob, repo, git_tree_entry_id(entry)) != 0) {
    snprintf(j->err, sizeof j->err, "%s is not a file", j->file);
    j->missing = 1;
    goto out;
  }
  j->len = (size_t)git_blob_rawsize(blob);
  j->text = herald_xmalloc(j->len + 1);
  memcpy(j->text, git_blob_rawcontent(blob), j->len);
  j->text[j->len] = '\0';
out:
  git_blob_free(blob);
  git_tree_entry_free(entry);
  git_tree_free(tree);
  git_commit_free(commit);
  git_object_free(rev);
  git_remote_free(remote);
  git_repository_free(repo);
}

static void work(uv_work_t *w) {
  git_job *j = w->data;
  /* a fresh token per read (they last an hour); Argo takes creds before the App */
  if (j->app_key && !j->username && github_app_token(j) != 0) return;
  uv_mutex_lock(&git_mu);
  read_file(j);
  uv_mutex_unlock(&git_mu);
}

static void after_work(uv_work_t *w, int status) {
  git_job *j = w->data;
  herald_kube_req *kr = j->kr;
  if (kr) {
    kr->git = NULL;
    if (j->text) {
      lua_pushinteger(kr->co, 200);
      lua_pushlstring(kr->co, j->text, j->len);
    } else {
      lua_pushinteger(kr->co, j->missing ? 404 : 0);
      lua_pushstring(kr->co, j->err[0] ? j->err : "git read failed");
    }
    herald__kube_resume(kr, 2);
  }
  job_free(j);
}

int herald__kube_git_start(herald_kube_req *kr) {
  lua_State *co = kr->co;
  if (!lua_istable(co, 2)) {
    lua_settop(co, 0);
    return HERALD_EINVAL;
  }
  uv_once(&init_once, git_init);
  git_job *j = herald_xcalloc(1, sizeof *j);
  j->url = field(co, 2, "url");
  j->file = field(co, 2, "file");
  j->branch = field(co, 2, "branch");
  j->tag = field(co, 2, "tag");
  j->ref = field(co, 2, "ref");
  j->dir = field(co, 2, "dir");
  j->username = field(co, 2, "username");
  j->password = field(co, 2, "password");
  j->ssh_key = field(co, 2, "ssh_key");
  j->remote_name = field(co, 2, "remote_name");
  j->remote_url = field(co, 2, "remote_url");
  j->app_id = field(co, 2, "app_id");
  j->app_installation = field(co, 2, "app_installation");
  j->app_key = field(co, 2, "app_key");
  j->app_api = field(co, 2, "app_api");
  lua_getfield(co, 2, "insecure");
  j->insecure = lua_toboolean(co, -1);
  lua_settop(co, 0);
  if (!j->url || !j->file || !j->dir || (j->remote_name && !j->remote_url)) {
    job_free(j);
    return HERALD_EINVAL;
  }
  j->kr = kr;
  j->work.data = j;
  if (uv_queue_work(kr->kc->trigger->engine->loop, &j->work, work, after_work) != 0) {
    job_free(j);
    return HERALD_EIO;
  }
  kr->git = j;
  return 0;
}

void herald__kube_git_abandon(herald_kube_req *kr) {
  if (kr->git) kr->git->kr = NULL;
  kr->git = NULL;
}
